//! The async operations the services call on [`super::Core`], one file per
//! concern. The transitions they run are in [`super::procs`] and
//! [`super::agents`].

mod agents;
mod logs;
mod pools;
mod processes;
mod retention;

use super::*;

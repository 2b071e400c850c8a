//! `mpctl context`: named clusters, as kubectl's (`add`, `use`, `unset`,
//! `list`, `remove`). The file and the resolution order are the SDK's
//! ([`mpctl::contexts`]), so a program resolves the same cluster.

use anyhow::Context as _;
use clap::{Args, Subcommand};
use mpctl::contexts::{check_name, Context, Contexts};
use serde_json::{json, Value};

use super::output::{print_json, table};
use super::{Format, Global};

#[derive(Subcommand)]
pub enum ContextCommand {
    /// Add (or replace) a context: `mpctl context add NAME --addr HOST:PORT --authkey-file FILE`
    Add(AddArgs),
    /// Make NAME the context commands use when none is named
    Use(NameArgs),
    /// Use no current context (back to MPCTL_ADDR, `mpctl dev`, or the embedded cluster)
    Unset,
    /// List the contexts; `*` marks the current one
    List(ListArgs),
    /// Remove a context
    Remove(NameArgs),
}

#[derive(Args)]
pub struct AddArgs {
    name: String,
    /// Also make it the current context
    #[arg(long = "use")]
    make_current: bool,
}

#[derive(Args)]
pub struct NameArgs {
    name: String,
}

#[derive(Args)]
pub struct ListArgs {
    #[arg(short = 'o', long = "output", value_enum, default_value_t)]
    output: Format,
}

pub fn context(g: &Global, c: ContextCommand) -> anyhow::Result<i32> {
    let mut all = Contexts::load()?;
    match c {
        ContextCommand::Add(a) => {
            check_name(&a.name)?;
            let addr = g.addr.clone().context(
                "give the coordinator's address: mpctl context add NAME --addr HOST:PORT --authkey-file FILE",
            )?;
            let key = g.authkey_file.as_ref().context(
                "give the cluster's authkey file: mpctl context add NAME --addr HOST:PORT --authkey-file FILE",
            )?;
            // Checked now, so a typo is found here rather than at first use.
            mpctl::AuthKey::load(key)
                .with_context(|| format!("--authkey-file {}", key.display()))?;
            let authkey_file = std::fs::canonicalize(key)
                .with_context(|| format!("--authkey-file {}", key.display()))?;
            all.contexts.insert(
                a.name.clone(),
                Context {
                    addr,
                    authkey_file,
                    plaintext: g.plaintext,
                },
            );
            if a.make_current {
                all.current = Some(a.name.clone());
            }
            all.save()?;
            println!("{}", a.name);
        }
        ContextCommand::Use(a) => {
            all.get(&a.name)?;
            all.current = Some(a.name.clone());
            all.save()?;
            println!("{}", a.name);
        }
        ContextCommand::Unset => {
            all.current = None;
            all.save()?;
        }
        ContextCommand::Remove(a) => {
            all.get(&a.name)?;
            all.contexts.remove(&a.name);
            if all.current.as_deref() == Some(a.name.as_str()) {
                all.current = None;
            }
            all.save()?;
            println!("{}", a.name);
        }
        ContextCommand::List(a) => {
            let current = all.current.as_deref();
            match a.output {
                Format::Json => print_json(&Value::Array(
                    all.contexts
                        .iter()
                        .map(|(name, c)| {
                            json!({
                                "name": name,
                                "current": current == Some(name.as_str()),
                                "addr": c.addr,
                                "authkey_file": c.authkey_file,
                                "plaintext": c.plaintext,
                            })
                        })
                        .collect(),
                )),
                Format::Table => table(
                    &["CURRENT", "NAME", "ADDR", "AUTHKEY FILE"],
                    &all.contexts
                        .iter()
                        .map(|(name, c)| {
                            vec![
                                if current == Some(name.as_str()) {
                                    "*"
                                } else {
                                    ""
                                }
                                .into(),
                                name.clone(),
                                if c.plaintext {
                                    format!("{} (plaintext)", c.addr)
                                } else {
                                    c.addr.clone()
                                },
                                c.authkey_file.display().to_string(),
                            ]
                        })
                        .collect::<Vec<_>>(),
                ),
            }
        }
    }
    Ok(0)
}

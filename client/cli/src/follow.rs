//! Following a started process to its end, as `run` and `attach` do: its
//! output streamed to ours (resuming across dropped connections), Ctrl-C
//! forwarded as SIGTERM then SIGKILL, and the exit status a shell expects.

use std::io::Write;

use mpctl::{Error, LogOffsets, LogStream, Process, ProcessState};

use super::output::{print_json, process_json};
use super::{exit_status, start_error_status, Format, EXIT_MPCTL};

/// Streams `p`'s output from `from` until it stops, then returns the exit
/// status for it (and prints its record with `-o json`).
pub async fn to_the_end(p: &mut Process, from: LogOffsets, output: Format) -> anyhow::Result<i32> {
    let mut logs = p.logs_from(LogStream::Both, true, from).await?;
    let mut interrupts = 0;
    let mut ctrl_c = Box::pin(tokio::signal::ctrl_c());
    loop {
        tokio::select! {
            chunk = logs.message() => match chunk {
                Ok(Some(c)) => {
                    if !write_chunk(c.stream, &c.data) {
                        break; // our stdout is gone (e.g. `| head`); keep the exit code
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let reason = match e {
                        Error::Rpc { message, .. } => message,
                        other => other.to_string(),
                    };
                    eprintln!("mpctl: output stream interrupted: {reason}");
                    break;
                }
            },
            _ = &mut ctrl_c => {
                interrupts += 1;
                let id = p.id().unwrap_or_default().to_owned();
                if interrupts == 1 {
                    eprintln!("mpctl: sending SIGTERM to {id} (Ctrl-C again to kill)");
                    p.terminate().await?;
                } else {
                    eprintln!("mpctl: sending SIGKILL to {id}");
                    p.kill().await?;
                }
                ctrl_c = Box::pin(tokio::signal::ctrl_c());
            }
        }
    }
    p.join(None).await?;
    let info = p.info().expect("started").clone();
    if output == Format::Json {
        print_json(&process_json(&info));
    }
    Ok(match (p.state(), p.exitcode()) {
        (_, Some(code)) => exit_status(code),
        (Some(ProcessState::Lost), _) => {
            eprintln!(
                "mpctl: {} is lost: its node {} stopped answering; its exit code will be known if the node comes back",
                info.id, info.node
            );
            EXIT_MPCTL
        }
        (Some(ProcessState::Failed), _) => {
            let message = info.start_error.as_deref().unwrap_or_default();
            eprintln!("mpctl: start error: {message}");
            start_error_status(message)
        }
        _ => EXIT_MPCTL,
    })
}

/// Writes output to our stdout or stderr; false once that is gone.
pub fn write_chunk(stream: LogStream, data: &[u8]) -> bool {
    if stream == LogStream::Stderr {
        std::io::stderr().write_all(data).is_ok()
    } else {
        let mut out = std::io::stdout();
        out.write_all(data).and_then(|_| out.flush()).is_ok()
    }
}

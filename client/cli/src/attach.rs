//! `mpctl attach`: come back to a process started earlier (by `submit`,
//! `run -d`, or a `run` whose terminal was lost): its output from the start
//! (or its last lines with `--tail`), then, like `run`, until it stops, and
//! its exit status.

use clap::Args;
use mpctl::{LogOffsets, LogStream, Process};

use super::follow::{self, write_chunk};
use super::{Format, Global};

#[derive(Args)]
pub struct AttachArgs {
    /// The process id
    id: String,
    /// Start with the last N lines of each of stdout and stderr instead of
    /// all the output so far
    #[arg(long, value_name = "N")]
    tail: Option<usize>,
    /// Output format of the final process record
    #[arg(short = 'o', long = "output", value_enum, default_value_t)]
    output: Format,
}

pub async fn attach(g: &Global, a: AttachArgs) -> anyhow::Result<i32> {
    let cluster = g.cluster().await?;
    let result = async {
        let mut p = Process::attach(&cluster, &a.id).await?;
        let from = match a.tail {
            None => LogOffsets::default(),
            Some(n) => print_tail(&p, n).await?,
        };
        follow::to_the_end(&mut p, from, a.output).await
    }
    .await;
    cluster.close().await;
    result
}

/// Prints the last `n` lines of each stream so far and says where they end.
async fn print_tail(p: &Process, n: usize) -> anyhow::Result<LogOffsets> {
    let mut from = LogOffsets::default();
    for stream in [LogStream::Stdout, LogStream::Stderr] {
        let mut logs = p.logs(stream, false).await?;
        let mut text = Vec::new();
        while let Some(c) = logs.message().await? {
            text.extend_from_slice(&c.data);
        }
        let end = text.len() as u64;
        write_chunk(stream, last_lines(&text, n));
        match stream {
            LogStream::Stderr => from.stderr = end,
            _ => from.stdout = end,
        }
    }
    Ok(from)
}

/// The last `n` lines of `text` (a last line without its newline counts).
fn last_lines(text: &[u8], n: usize) -> &[u8] {
    if n == 0 {
        return &[];
    }
    let body = text.strip_suffix(b"\n").unwrap_or(text);
    let mut seen = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == n {
                return &text[i + 1..];
            }
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::last_lines;

    #[test]
    fn the_last_lines_of_output() {
        assert_eq!(last_lines(b"1\n2\n3\n", 2), b"2\n3\n");
        assert_eq!(last_lines(b"1\n2\n3", 2), b"2\n3");
        assert_eq!(last_lines(b"1\n2\n3\n", 5), b"1\n2\n3\n");
        assert_eq!(last_lines(b"1\n2\n3\n", 0), b"");
        assert_eq!(last_lines(b"", 3), b"");
    }
}

//! CPython's exit-code rule (`os.waitstatus_to_exitcode`), the one place
//! mpctl decodes a wait status: exit `n` → `n`; killed by signal `N` →
//! `-N`, for every signal number the kernel has (1–64, real-time ones
//! included). Signals are plain integers here on purpose: an enum of named
//! signals cannot express `SIGRTMIN+3`, and an exit must never be lost to
//! a decoding error.

/// The exit code of a raw wait status as `waitpid(2)` stores it; `None` for
/// a stop or continue report (only returned when `WUNTRACED` or
/// `WCONTINUED` is asked for, which mpctl never does: such a status is not
/// an exit and has no code).
pub fn exitcode(status: i32) -> Option<i32> {
    if libc::WIFEXITED(status) {
        Some(libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        Some(-libc::WTERMSIG(status))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::exitcode;

    #[test]
    fn every_exit_status_is_its_code() {
        for n in 0..=255 {
            assert_eq!(exitcode(n << 8), Some(n), "exit {n}");
        }
    }

    #[test]
    fn every_signal_is_minus_its_number_with_or_without_a_core() {
        for sig in 1..=64 {
            assert_eq!(exitcode(sig), Some(-sig), "signal {sig}");
            assert_eq!(
                exitcode(sig | 0x80),
                Some(-sig),
                "signal {sig}, core dumped"
            );
        }
    }

    #[test]
    fn stop_and_continue_reports_are_not_exits() {
        assert_eq!(exitcode((libc::SIGSTOP << 8) | 0x7f), None);
        assert_eq!(exitcode((libc::SIGRTMIN() << 8) | 0x7f), None);
        assert_eq!(exitcode(0xffff), None);
    }
}

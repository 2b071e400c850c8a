//! Bounded label values for free-text reasons: a launch failure's error
//! comes from the node as text (the OS reason), and a label must come from a
//! fixed set, so both daemons classify it here, the same way.

/// Every value [`launch_failure`] returns.
pub const LAUNCH_FAILURES: [&str; 6] = [
    "not_found",
    "permission_denied",
    "exec_format",
    "journal_damaged",
    "empty_argv",
    "other",
];

/// The label of a launch failure's error text.
pub fn launch_failure(error: &str) -> &'static str {
    if error.contains("No such file or directory") || error.contains("not found") {
        "not_found"
    } else if error.contains("Permission denied") {
        "permission_denied"
    } else if error.contains("Exec format error") {
        "exec_format"
    } else if error.contains("exit record is damaged") {
        "journal_damaged"
    } else if error.contains("empty argv") {
        "empty_argv"
    } else {
        "other"
    }
}

/// Its place in [`LAUNCH_FAILURES`].
pub fn launch_failure_index(error: &str) -> usize {
    let label = launch_failure(error);
    LAUNCH_FAILURES
        .iter()
        .position(|l| *l == label)
        .unwrap_or(LAUNCH_FAILURES.len() - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_reasons_map_to_fixed_labels() {
        assert_eq!(
            launch_failure("No such file or directory (os error 2)"),
            "not_found"
        );
        assert_eq!(
            launch_failure("Permission denied (os error 13)"),
            "permission_denied"
        );
        assert_eq!(launch_failure("something new"), "other");
        assert_eq!(launch_failure_index("something new"), 5);
    }
}

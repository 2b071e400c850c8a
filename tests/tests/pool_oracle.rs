//! Oracle: the SDK's default `map` chunksize is CPython's, asked of
//! `multiprocessing.Pool` itself on this machine (`MapResult._chunksize`).

use std::process::Command;

const CASES: [(usize, usize); 9] = [
    (0, 4),
    (1, 4),
    (7, 2),
    (16, 4),
    (17, 4),
    (100, 3),
    (1000, 2),
    (10_000, 4),
    (10_001, 2),
];

/// The map is finished and the pool closed and joined before the next:
/// leaving `with Pool(...)` while a map is in flight terminates the workers,
/// and CPython's terminate then hangs about once in a hundred runs here.
#[test]
fn default_chunksize_matches_cpython() {
    let cases: Vec<String> = CASES.iter().map(|(n, p)| format!("({n}, {p})")).collect();
    let script = format!(
        "import multiprocessing as mp\n\
         out = []\n\
         for n, p in [{}]:\n\
         \x20   pool = mp.get_context('fork').Pool(p)\n\
         \x20   r = pool.map_async(abs, range(n))\n\
         \x20   r.get()\n\
         \x20   pool.close()\n\
         \x20   pool.join()\n\
         \x20   out.append(r._chunksize)\n\
         print(' '.join(map(str, out)))\n",
        cases.join(", ")
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("python3 (CPython 3) must be on PATH for the oracle tests");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cpython: Vec<usize> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    let ours: Vec<usize> = CASES
        .iter()
        .map(|(n, p)| mpctl::pool::default_chunksize(*n, *p))
        .collect();
    assert_eq!(ours, cpython, "cases (len, processes): {CASES:?}");
}

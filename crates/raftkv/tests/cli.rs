//! The binary's handling of wrong configuration: each mistake gets a clear error and a
//! non-zero exit, and a second server on the same data directory is refused.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn raftkv(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_raftkv"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run raftkv");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn wrong_server_configuration_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("s1");
    let d = d.to_str().unwrap();
    let (p, c) = (port(), port());
    let peer = format!("127.0.0.1:{p}");
    let client = format!("127.0.0.1:{c}");
    let cluster = format!("1={peer}");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "server",
                "--data-dir",
                d,
                "--peer-addr",
                &peer,
                "--client-addr",
                &client,
                "--initial-cluster",
                &cluster,
            ],
            "--id is required",
        ),
        (
            vec![
                "server",
                "--id",
                "1",
                "--data-dir",
                d,
                "--peer-addr",
                &peer,
                "--client-addr",
                &client,
                "--initial-cluster",
                "1:localhost",
            ],
            "is not id=host:port",
        ),
        (
            vec![
                "server",
                "--id",
                "2",
                "--data-dir",
                d,
                "--peer-addr",
                &peer,
                "--client-addr",
                &client,
                "--initial-cluster",
                &cluster,
            ],
            "does not name this store",
        ),
        (
            vec![
                "server",
                "--id",
                "1",
                "--data-dir",
                d,
                "--peer-addr",
                &peer,
                "--client-addr",
                &client,
                "--initial-cluster",
                &cluster,
                "--split-keys",
                "p,g",
            ],
            "sorted",
        ),
        (
            vec![
                "server",
                "--id",
                "1",
                "--data-dir",
                d,
                "--peer-addr",
                "nonsense",
                "--client-addr",
                &client,
                "--initial-cluster",
                &cluster,
            ],
            "--peer-addr",
        ),
    ];
    for (args, want) in cases {
        let (ok, text) = raftkv(&args);
        assert!(!ok, "{args:?} should fail");
        assert!(
            text.contains(want),
            "{args:?}: expected {want:?} in:\n{text}"
        );
    }
    // A TOML file with an unknown key is refused, naming the key.
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "id = 1\nbogus_option = true\n").unwrap();
    let (ok, text) = raftkv(&["server", "--config", cfg.to_str().unwrap()]);
    assert!(!ok);
    assert!(text.contains("bogus_option"), "{text}");
}

#[test]
fn a_second_server_on_the_same_data_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("s1");
    let (p1, c1, p2, c2) = (port(), port(), port(), port());
    let cluster = format!("1=127.0.0.1:{p1}");
    let log_path = dir.path().join("first.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut first = Command::new(env!("CARGO_BIN_EXE_raftkv"))
        .args(["server", "--id", "1", "--data-dir", d.to_str().unwrap()])
        .args([
            "--peer-addr",
            &format!("127.0.0.1:{p1}"),
            "--client-addr",
            &format!("127.0.0.1:{c1}"),
        ])
        .args(["--initial-cluster", &cluster])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    // Wait (bounded) until the first server has opened its store, so it holds the lock.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if text.contains("server started") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "first server did not start:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (ok, text) = raftkv(&[
        "server",
        "--id",
        "1",
        "--data-dir",
        d.to_str().unwrap(),
        "--peer-addr",
        &format!("127.0.0.1:{p2}"),
        "--client-addr",
        &format!("127.0.0.1:{c2}"),
        "--initial-cluster",
        &format!("1=127.0.0.1:{p2}"),
    ]);
    let _ = first.kill();
    let _ = first.wait();
    assert!(!ok, "the second server started on a locked directory");
    assert!(
        text.to_lowercase().contains("lock"),
        "error should say the directory is locked:\n{text}"
    );
}

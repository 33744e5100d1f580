//! Issue 13 defect 16 (reliability.md §7): `edge-cloud devices create` refuses identity names
//! the broker's ACL treats specially (`edge-service`, `edge-audit`) and names that are not one
//! MQTT topic level — with a clear error and a non-zero exit — and never overwrites an identity
//! already issued from the CA (the runner's own key and certificate above all).
#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};

use edge_e2e::TestDatabase;

fn edge_cloud(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_edge-cloud"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

#[test]
fn devices_create_edge_service_is_refused_and_keeps_the_runners_key() {
    let db = TestDatabase::create();
    let url = db.url();
    assert!(edge_cloud(&["migrate", "--database-url", &url])
        .status
        .success());
    let ca = tempfile::tempdir().unwrap();
    let ca_dir = ca.path().to_str().unwrap();
    let init = edge_cloud(&["pki", "init", "--ca-dir", ca_dir]);
    assert!(init.status.success(), "{init:?}");
    let key = ca.path().join("edge-service.key");
    let cert = ca.path().join("edge-service.crt");
    let (key_before, cert_before) = (std::fs::read(&key).unwrap(), std::fs::read(&cert).unwrap());

    for name in [
        "edge-service",
        "edge-audit",
        "Edge-Service",
        "",
        "+",
        "#",
        "a/b",
        "/",
    ] {
        let out = edge_cloud(&[
            "devices",
            "create",
            "--database-url",
            &url,
            "--name",
            name,
            "--slug",
            "acme",
            "--ca-dir",
            ca_dir,
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "devices create --name {name:?} must fail; stdout: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            stderr.contains("reserve") || stderr.contains("empty"),
            "--name {name:?}: the error says why: {stderr}"
        );
    }
    assert_eq!(
        std::fs::read(&key).unwrap(),
        key_before,
        "the runner's key is untouched"
    );
    assert_eq!(
        std::fs::read(&cert).unwrap(),
        cert_before,
        "the runner's cert is untouched"
    );
    // A slug starting with '$' would put the device under a system topic no `+/…` matches.
    let out = edge_cloud(&[
        "devices",
        "create",
        "--database-url",
        &url,
        "--name",
        "gw-1",
        "--slug",
        "$SYS",
    ]);
    assert!(!out.status.success());

    // An identity already issued is never re-issued over.
    let args = [
        "devices",
        "create",
        "--database-url",
        &url,
        "--name",
        "gw-07",
        "--slug",
        "acme",
        "--ca-dir",
        ca_dir,
    ];
    assert!(edge_cloud(&args).status.success());
    let gw_key = std::fs::read(ca.path().join("gw-07.key")).unwrap();
    let again = edge_cloud(&args);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    assert_eq!(std::fs::read(ca.path().join("gw-07.key")).unwrap(), gw_key);

    let c = tokio::runtime::Runtime::new().unwrap().block_on(async {
        db.connect()
            .await
            .query_one("SELECT count(*) FROM edge_devices", &[])
            .await
            .unwrap()
            .get::<_, i64>(0)
    });
    assert_eq!(c, 1, "only gw-07 was registered");
}

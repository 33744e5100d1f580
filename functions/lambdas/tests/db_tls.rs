//! TLS to PostgreSQL (issue 14 item 1), against real servers the harness starts: the shared
//! cluster (`ssl=on`, `hostssl`-only pg_hba.conf, certificate for `localhost`/`127.0.0.1` from
//! its own CA) and a plaintext-only server of this binary's own. Each `sslmode` behaves as
//! libpq's, and each failure is one line that names it — through the store's
//! `connect::connect`, the Lambdas' pool and the `edge-cloud migrate` binary.
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::sync::OnceLock;

use edge_cloud_store::connect::{self, ConnectError};
use edge_e2e::pki::CertificateAuthority;
use edge_e2e::postgres::{percent_encode, PostgresServer};
use edge_e2e::TestDatabase;
use edge_functions::aws::db::lambda_pool;

/// A key=value URL of `db` with `host`/`hostaddr` and the TLS parameters chosen by the test.
fn url_of(db: &TestDatabase, host: &str, tls: &str) -> String {
    format!(
        "host={host} hostaddr=127.0.0.1 port={} user=postgres dbname={} {tls}",
        db.port(),
        db.name()
    )
}

fn ca_of(db: &TestDatabase) -> String {
    db.sslrootcert()
        .expect("the harness cluster runs with TLS (EDGE_TEST_PG_TLS unset or 1)")
        .to_string_lossy()
        .into_owned()
}

/// Whether this session is encrypted, as the server sees it.
async fn uses_tls(client: &tokio_postgres::Client) -> bool {
    client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// The plaintext-only server (`ssl=off`), shared by the tests of this binary.
fn plaintext_server() -> &'static PostgresServer {
    static SERVER: OnceLock<PostgresServer> = OnceLock::new();
    SERVER.get_or_init(|| PostgresServer::start(false).unwrap())
}

fn connect_error(result: Result<tokio_postgres::Client, ConnectError>) -> String {
    match result {
        Ok(_) => panic!("the connection succeeded"),
        Err(error) => {
            let line = error.to_string();
            assert!(!line.contains('\n'), "one line: {line}");
            line
        }
    }
}

#[tokio::test]
async fn verify_full_against_the_harness_ca_is_encrypted() {
    let db = TestDatabase::create_async().await;
    assert_eq!(db.sslmode(), Some("verify-full"));
    for url in [db.url(), db.postgres_url()] {
        let client = connect::connect(&url).await.unwrap();
        assert!(uses_tls(&client).await, "{url}");
    }
    // The pools over the same URL: the runner's and the Lambdas'.
    let pool = edge_cloud_store::pool::connect(&db.url(), 1).unwrap();
    assert!(uses_tls(&pool.get().await.unwrap()).await);
    let pool = lambda_pool(&db.url(), 1).unwrap();
    assert!(uses_tls(&pool.get().await.unwrap()).await);
}

#[tokio::test]
async fn a_wrong_ca_is_one_clear_line() {
    let db = TestDatabase::create_async().await;
    let other = CertificateAuthority::new("not the database's CA").unwrap();
    let path = other.cert_path().display().to_string();
    for mode in ["verify-full", "verify-ca", "require"] {
        let url = url_of(
            &db,
            "127.0.0.1",
            &format!("sslmode={mode} sslrootcert={path}"),
        );
        let line = connect_error(connect::connect(&url).await);
        assert_eq!(
            line,
            format!(
                "database TLS: server certificate of 127.0.0.1 not trusted by sslrootcert \
                 {path} (UnknownIssuer)"
            ),
            "sslmode={mode}"
        );
    }
}

#[tokio::test]
async fn a_host_name_not_in_the_certificate_fails_verify_full_but_passes_verify_ca() {
    let db = TestDatabase::create_async().await;
    let ca = ca_of(&db);
    // The certificate names localhost and 127.0.0.1; connect to the same address as another
    // name (hostaddr), which is what the check sees.
    for host in ["localhost", "127.0.0.1"] {
        let url = url_of(&db, host, &format!("sslmode=verify-full sslrootcert={ca}"));
        assert!(uses_tls(&connect::connect(&url).await.unwrap()).await);
    }
    let url = url_of(
        &db,
        "db.example.invalid",
        &format!("sslmode=verify-full sslrootcert={ca}"),
    );
    assert_eq!(
        connect_error(connect::connect(&url).await),
        "database TLS: server certificate not valid for host db.example.invalid \
         (sslmode=verify-full checks the host name; verify-ca would not)"
    );
    let url = url_of(
        &db,
        "db.example.invalid",
        &format!("sslmode=verify-ca sslrootcert={ca}"),
    );
    assert!(uses_tls(&connect::connect(&url).await.unwrap()).await);
    // require checks nothing without sslrootcert (libpq), but still encrypts.
    let url = url_of(&db, "db.example.invalid", "sslmode=require");
    assert!(uses_tls(&connect::connect(&url).await.unwrap()).await);
}

#[tokio::test]
async fn a_plaintext_only_server_refuses_require_and_verify_in_one_line() {
    let db = tokio::task::spawn_blocking(|| plaintext_server().create_database())
        .await
        .unwrap()
        .unwrap();
    let refused = "database TLS: the server does not offer TLS, but sslmode (require, verify-ca \
                   or verify-full) does not allow a connection without it";
    let url = url_of(&db, "127.0.0.1", "sslmode=require");
    assert_eq!(connect_error(connect::connect(&url).await), refused);
    let other = CertificateAuthority::new("any CA").unwrap();
    let url = url_of(
        &db,
        "127.0.0.1",
        &format!(
            "sslmode=verify-full sslrootcert={}",
            other.cert_path().display()
        ),
    );
    assert_eq!(connect_error(connect::connect(&url).await), refused);
}

#[tokio::test]
async fn a_hostssl_only_server_refuses_disable_in_one_line() {
    let db = TestDatabase::create_async().await;
    let url = url_of(&db, "127.0.0.1", "sslmode=disable");
    let line = connect_error(connect::connect(&url).await);
    assert!(
        line.starts_with("database refuses a connection without TLS (sslmode=disable): "),
        "{line}"
    );
    assert!(line.ends_with("no encryption"), "{line}");
}

#[tokio::test]
async fn prefer_uses_tls_where_offered_and_plaintext_elsewhere() {
    let tls_db = TestDatabase::create_async().await;
    let plain_db = tokio::task::spawn_blocking(|| plaintext_server().create_database())
        .await
        .unwrap()
        .unwrap();
    // No sslmode at all is libpq's default, prefer.
    for tls in ["sslmode=prefer", "sslmode=allow", ""] {
        let client = connect::connect(&url_of(&tls_db, "127.0.0.1", tls))
            .await
            .unwrap();
        assert!(uses_tls(&client).await, "TLS server, {tls:?}");
        let client = connect::connect(&url_of(&plain_db, "127.0.0.1", tls))
            .await
            .unwrap();
        assert!(!uses_tls(&client).await, "plaintext server, {tls:?}");
    }
    // disable against the plaintext server, for completeness.
    let client = connect::connect(&url_of(&plain_db, "127.0.0.1", "sslmode=disable"))
        .await
        .unwrap();
    assert!(!uses_tls(&client).await);
}

#[tokio::test]
async fn the_lambdas_default_to_verify_full() {
    // No sslmode in the URL: verify-full, which needs a CA (EDGE_DB_SSLROOTCERT is not set
    // in this test process).
    assert!(std::env::var("EDGE_DB_SSLROOTCERT").is_err());
    let db = TestDatabase::create_async().await;
    let url = format!(
        "host=127.0.0.1 port={} user=postgres dbname={}",
        db.port(),
        db.name()
    );
    let error = lambda_pool(&url, 1).unwrap_err().to_string();
    assert_eq!(
        error,
        "configuration: database TLS: sslmode=verify-full needs sslrootcert (a CA bundle file \
         such as the RDS global-bundle.pem, or `system`)"
    );
    // With the CA named in the URL, the default verify-full holds against a host not in the
    // certificate: the pool's first checkout fails, naming it.
    let url = format!(
        "host=db.example.invalid hostaddr=127.0.0.1 port={} user=postgres dbname={} \
         sslrootcert={}",
        db.port(),
        db.name(),
        ca_of(&db)
    );
    let pool = lambda_pool(&url, 1).unwrap();
    let error = match pool.get().await {
        Ok(_) => panic!("connected without verify-full's host check"),
        Err(error) => edge_cloud_store::StoreError::from(error).to_string(),
    };
    assert!(
        error.ends_with(
            "database TLS: server certificate not valid for host db.example.invalid \
             (sslmode=verify-full checks the host name; verify-ca would not)"
        ),
        "{error}"
    );
}

#[test]
fn edge_cloud_migrate_prints_the_tls_failure_in_one_line_and_fails() {
    let db = TestDatabase::create();
    let other = CertificateAuthority::new("wrong CA for migrate").unwrap();
    let path = other.cert_path().display().to_string();
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/{}?sslmode=verify-full&sslrootcert={}",
        db.port(),
        db.name(),
        percent_encode(&path)
    );
    let output = Command::new(env!("CARGO_BIN_EXE_edge-cloud"))
        .args(["migrate", "--database-url", &url])
        .env("RUST_LOG", "off")
        // anyhow appends a backtrace when these ask for one: the line is what users see
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        stderr.trim_end(),
        format!(
            "Error: connecting to the database: database TLS: server certificate of 127.0.0.1 \
             not trusted by sslrootcert {path} (UnknownIssuer)"
        )
    );
    // And the same URL with the right CA migrates.
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/{}?sslmode=verify-full&sslrootcert={}",
        db.port(),
        db.name(),
        percent_encode(&db.sslrootcert().unwrap().display().to_string())
    );
    let output = Command::new(env!("CARGO_BIN_EXE_edge-cloud"))
        .args(["migrate", "--database-url", &url])
        .env("RUST_LOG", "off")
        // anyhow appends a backtrace when these ask for one: the line is what users see
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
}

#[test]
fn edge_cloud_migrate_refuses_a_bad_sslmode_by_name() {
    let output = Command::new(env!("CARGO_BIN_EXE_edge-cloud"))
        .args([
            "migrate",
            "--database-url",
            "postgres://postgres@127.0.0.1:1/x?sslmode=verify_full",
        ])
        .env("RUST_LOG", "off")
        // anyhow appends a backtrace when these ask for one: the line is what users see
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stderr).trim_end(),
        "Error: database URL: invalid sslmode \"verify_full\" (expected disable, allow, \
         prefer, require, verify-ca or verify-full)"
    );
}

//! `edge-cloud pki`: the local stack's certificate authority (mosquitto stands in for IoT
//! Core) — the broker's server certificate and the runner's service identity.

use clap::Subcommand;

use super::CommandError;
use crate::pki::LocalCa;
use crate::runner::SERVICE_IDENTITY;

#[derive(Subcommand, Debug)]
pub enum PkiCommand {
    /// Create (or reuse) the CA in DIR and issue the broker's server certificate
    /// (server.crt/server.key for localhost, 127.0.0.1, ::1) and the service identity
    /// (edge-service.crt/key) the runner connects with.
    Init {
        #[arg(long, env = "EDGE_CA_DIR")]
        ca_dir: std::path::PathBuf,
        /// Extra DNS names or IP addresses for the server certificate.
        #[arg(long = "server-name")]
        server_names: Vec<String>,
    },
}

/// Runs one `pki` subcommand.
pub fn execute(command: PkiCommand) -> Result<(), CommandError> {
    match command {
        PkiCommand::Init {
            ca_dir,
            server_names,
        } => {
            let ca = LocalCa::open_or_create(&ca_dir)?;
            let mut names = vec!["localhost", "127.0.0.1", "::1"];
            names.extend(server_names.iter().map(String::as_str));
            let server = ca.issue_server(&names)?;
            let service = ca.issue_client(SERVICE_IDENTITY)?;
            println!(
                "{}",
                serde_json::json!({
                    "ca_cert": ca.cert_path(),
                    "server_cert": server.cert_path,
                    "server_key": server.key_path,
                    "service_cert": service.cert_path,
                    "service_key": service.key_path,
                })
            );
        }
    }
    Ok(())
}

//! `warren server`: the API, the node agent and the data-plane gateway in one process.

use crate::NodeArgs;
use anyhow::Context;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use warren_api::node_backend::NodeBackend;
use warren_api::{ApiConfig, AppState, Manager, WorkspaceBackend};
use warren_gateway::{GatewayKeys, GatewayState};
use warren_state::Store;

#[derive(clap::Args, Debug)]
pub struct ServerArgs {
    #[command(flatten)]
    pub node: NodeArgs,
    /// Where the REST API listens.
    #[arg(long, env = "WARREN_API_ADDR", default_value = "127.0.0.1:8484")]
    pub api_addr: SocketAddr,
    /// Where the data-plane gateway (runtime API behind gateway tokens) listens.
    #[arg(long, env = "WARREN_GATEWAY_ADDR", default_value = "127.0.0.1:8485")]
    pub gateway_addr: SocketAddr,
    /// The gateway's URL as clients reach it (default: http://GATEWAY_ADDR).
    #[arg(long, env = "WARREN_GATEWAY_URL")]
    pub gateway_url: Option<String>,
    /// Image for workspaces created without one.
    #[arg(long, env = "WARREN_DEFAULT_IMAGE", default_value = "debian-12")]
    pub default_image: String,
    /// Lifetime of gateway tokens, in seconds.
    #[arg(long, env = "WARREN_GATEWAY_TOKEN_TTL", default_value_t = 3600)]
    pub gateway_token_ttl: u64,
    /// The shortest sleep-on-idle delay a workspace may ask for, in seconds.
    #[arg(long, env = "WARREN_IDLE_MIN_SECS", default_value_t = 120)]
    pub idle_min_secs: u64,
    /// Most workspaces this server holds (running or stopped).
    #[arg(long, env = "WARREN_MAX_WORKSPACES", default_value_t = 256)]
    pub max_workspaces: u32,
    #[command(flatten)]
    pub warm: WarmPoolArgs,
    /// Requests per second each client may make to the API (0: no limit)...
    #[arg(long, env = "WARREN_RATE_LIMIT_RPS", default_value_t = 50)]
    pub rate_limit_rps: u32,
    /// ...and how many it may make at once above that.
    #[arg(long, env = "WARREN_RATE_LIMIT_BURST", default_value_t = 200)]
    pub rate_limit_burst: u32,
    /// Where the edge's HTTPS listener (published ports, custom domains, the gateway
    /// at gateway.PREVIEW_DOMAIN) binds, e.g. 0.0.0.0:443. Without it the edge is off
    /// and public-access and domain requests answer 409 `edge_disabled`.
    #[arg(long, env = "WARREN_EDGE_ADDR")]
    pub edge_addr: Option<SocketAddr>,
    /// Published ports are served at https://<slug>.PREVIEW_DOMAIN.
    #[arg(
        long,
        env = "WARREN_PREVIEW_DOMAIN",
        default_value = "warren.localhost"
    )]
    pub preview_domain: String,
    /// The HTTPS port in published URLs (default: the edge listener's port; 443 when
    /// something forwards 443 to it).
    #[arg(long, env = "WARREN_EDGE_PUBLIC_PORT")]
    pub edge_public_port: Option<u16>,
    /// Where the SSH gateway listens (`ssh -p PORT <workspace id>@PUBLIC_HOST CMD`);
    /// needs --edge-addr. Without it there is no SSH gateway.
    #[arg(long, env = "WARREN_SSH_ADDR")]
    pub ssh_addr: Option<SocketAddr>,
    /// The host name or address users reach this server at (shown in URLs and
    /// commands).
    #[arg(long, env = "WARREN_PUBLIC_HOST", default_value = "127.0.0.1")]
    pub public_host: String,
    /// Certificates of custom domains (ACME) and their DNS check (boxed: the command
    /// enum stays small).
    #[command(flatten)]
    pub certs: Box<EdgeCertArgs>,
}

/// Workspaces booted ahead of demand (see `warren_node::warm`): a create of this
/// shape takes one and only hands it its name, environment and command.
#[derive(clap::Args, Debug)]
pub struct WarmPoolArgs {
    /// How many to keep booted (each holds its memory while it waits); 0: none.
    #[arg(long, env = "WARREN_WARM_POOL", default_value_t = 1)]
    pub warm_pool: u32,
    /// Their image (default: the default image).
    #[arg(long, env = "WARREN_WARM_POOL_IMAGE")]
    pub warm_pool_image: Option<String>,
    #[arg(long, env = "WARREN_WARM_POOL_CPUS", default_value_t = warren_api::model::DEFAULT_CPUS)]
    pub warm_pool_cpus: u32,
    #[arg(long, env = "WARREN_WARM_POOL_MEMORY_MB", default_value_t = warren_api::model::DEFAULT_MEMORY_MB)]
    pub warm_pool_memory_mb: u32,
    #[arg(long, env = "WARREN_WARM_POOL_DISK_MB", default_value_t = warren_api::model::DEFAULT_DISK_MB)]
    pub warm_pool_disk_mb: u64,
}

#[derive(clap::Args, Debug)]
pub struct EdgeCertArgs {
    /// An ACME directory (e.g. https://acme-v02.api.letsencrypt.org/directory): custom
    /// domains get their certificates from it (TLS-ALPN-01 on the edge's listener,
    /// which must then be reachable on port 443). Without it the local CA issues them.
    #[arg(long, env = "WARREN_ACME_DIRECTORY")]
    pub acme_directory: Option<String>,
    /// Contact e-mail of the ACME account.
    #[arg(long, env = "WARREN_ACME_EMAIL")]
    pub acme_email: Option<String>,
    /// A root certificate (PEM) to trust for the ACME directory's HTTPS (test CAs).
    #[arg(long, env = "WARREN_ACME_ROOT")]
    pub acme_root: Option<std::path::PathBuf>,
    /// Certificates are renewed when fewer days than this remain.
    #[arg(long, env = "WARREN_CERT_RENEW_DAYS", default_value_t = 30)]
    pub cert_renew_days: i64,
    /// The name server the custom-domain DNS check asks (default: resolv.conf).
    #[arg(long, env = "WARREN_DNS_SERVER")]
    pub dns_server: Option<SocketAddr>,
    /// The edge's public addresses (A/AAAA records a custom domain may point at;
    /// repeat or comma-separate; default: PUBLIC_HOST when it is an address).
    #[arg(long, env = "WARREN_EDGE_PUBLIC_IP", value_delimiter = ',')]
    pub edge_public_ip: Vec<std::net::IpAddr>,
}

/// Where the admin credentials go.
pub fn credentials_path(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("credentials.json")
}

fn write_credentials(path: &Path, id: &str, secret: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let body = serde_json::to_vec_pretty(&serde_json::json!({
        "client_id": id,
        "client_secret": secret,
    }))?;
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("create {}", tmp.display()))?;
    f.write_all(&body)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("write {}", path.display()))?;
    Ok(())
}

pub async fn server(args: ServerArgs) -> anyhow::Result<i32> {
    let mut node_config = args.node.config();
    let w = &args.warm;
    if w.warm_pool > 0 {
        node_config.warm_pool = vec![warren_node::WarmSpec {
            image: w
                .warm_pool_image
                .clone()
                .unwrap_or_else(|| args.default_image.clone()),
            cpus: w.warm_pool_cpus,
            memory_mb: w.warm_pool_memory_mb,
            disk_size_mb: w.warm_pool_disk_mb,
            count: w.warm_pool,
            die_with_owner: false,
        }];
    }
    let data_dir = node_config.data_dir.clone();
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("create the data directory {}", data_dir.display()))?;
    let node =
        warren_node::Node::new(node_config).context("cannot set up this host to run workspaces")?;
    let backend = Arc::new(NodeBackend::new(node));

    let store = Store::open(&data_dir.join("warren.db"))
        .await
        .context("cannot open the state database")?;
    if store.count_clients().await? == 0 {
        let c = store.create_client("admin", true).await?;
        let path = credentials_path(&data_dir);
        write_credentials(&path, &c.client.id, &c.secret)?;
        eprintln!("warren: admin credentials written to {}", path.display());
    }
    let keys = GatewayKeys::load_or_create(&data_dir.join("gateway.key"))?;

    let api_listener = tokio::net::TcpListener::bind(args.api_addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.api_addr))?;
    let gw_listener = tokio::net::TcpListener::bind(args.gateway_addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.gateway_addr))?;
    let edge_listener = match args.edge_addr {
        Some(a) => Some(
            tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("cannot listen on {a}"))?,
        ),
        None => None,
    };
    let ssh_listener = match (args.ssh_addr, &edge_listener) {
        (Some(a), Some(_)) => Some(
            tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("cannot listen on {a}"))?,
        ),
        (Some(_), None) => anyhow::bail!("--ssh-addr needs --edge-addr"),
        (None, _) => None,
    };
    let ssh_addr = ssh_listener.as_ref().map(|l| l.local_addr()).transpose()?;
    let api_addr = api_listener.local_addr()?;
    let gw_addr = gw_listener.local_addr()?;
    let acme = args
        .certs
        .acme_directory
        .clone()
        .map(|url| warren_edge::acme::AcmeConfig {
            directory_url: url,
            contact_email: args.certs.acme_email.clone(),
            directory_root: args.certs.acme_root.clone(),
        });
    let dns = warren_edge::dns::DnsConfig {
        nameserver: args.certs.dns_server,
        public_ips: if args.certs.edge_public_ip.is_empty() {
            args.public_host.parse().into_iter().collect()
        } else {
            args.certs.edge_public_ip.clone()
        },
    };
    let edge_config = match &edge_listener {
        Some(l) => {
            let edge_addr = l.local_addr()?;
            let preview = args.preview_domain.trim_matches('.').to_ascii_lowercase();
            Some(warren_edge::EdgeConfig {
                https_addr: edge_addr,
                gateway_host: format!("gateway.{preview}"),
                preview_domain: preview,
                public_https_port: args.edge_public_port.unwrap_or(edge_addr.port()),
                ssh_port: ssh_addr.map(|a| a.port()),
                public_host: args.public_host.clone(),
                acme: acme.clone(),
                renew_before_days: args.certs.cert_renew_days,
                renew_check_interval: Duration::from_secs(3600),
                dns: dns.clone(),
            })
        }
        None => None,
    };

    let mut config = ApiConfig {
        data_dir: data_dir.clone(),
        gateway_url: args
            .gateway_url
            .clone()
            .unwrap_or_else(|| format!("http://{gw_addr}")),
        gateway_token_ttl: Duration::from_secs(args.gateway_token_ttl.max(1)),
        default_image: args.default_image.clone(),
        idle_min_secs: args.idle_min_secs,
        edge: edge_config.clone(),
        ..ApiConfig::default()
    };
    config.capacity.max_workspaces = args.max_workspaces;
    config.rate_limit = warren_api::ratelimit::RateLimit {
        per_second: args.rate_limit_rps,
        burst: args.rate_limit_burst,
    };

    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    backend.set_events(tx);
    let manager = Manager::new(store.clone(), backend.clone(), config, keys.clone());
    manager
        .startup()
        .await
        .map_err(|e| anyhow::anyhow!("reconciling at start: {}", e.message))?;
    manager.spawn_background(rx);
    // After startup's reconcile removed the warm VMs of an earlier run.
    backend.start_warm_pool();

    let gateway = warren_gateway::router(GatewayState::new(keys, store.clone())?);
    let edge_task = match (edge_listener, edge_config) {
        (Some(listener), Some(cfg)) => {
            let certs = warren_edge::CertStore::open(&data_dir, store.clone())
                .context("cannot open the edge's certificate store")?;
            eprintln!(
                "warren: edge listening on https://{} for *.{} (CA: {})",
                cfg.https_addr,
                cfg.preview_domain,
                certs.ca().pem_path().display()
            );
            if let (Some(listener), Some(addr)) = (ssh_listener, ssh_addr) {
                let key = warren_edge::ssh::host_key(&data_dir.join("edge"), certs.master())
                    .context("cannot prepare the SSH gateway's host key")?;
                let ssh_store = store.clone();
                tokio::spawn(async move {
                    if let Err(e) = warren_edge::ssh::serve(ssh_store, key, listener).await {
                        tracing::error!(error = %e, "the SSH gateway stopped");
                    }
                });
                eprintln!("warren: ssh gateway listening on {addr}");
            }
            let edge = warren_edge::Edge::new(cfg, store, certs, Some(gateway.clone()));
            tokio::spawn(warren_edge::serve(edge, listener))
        }
        // No edge: a task that never ends keeps the select below simple.
        _ => tokio::spawn(std::future::pending()),
    };
    let api = warren_api::router(AppState::new(manager));
    let gw_task = tokio::spawn(async move { axum::serve(gw_listener, gateway).await });
    let api_task = tokio::spawn(async move { axum::serve(api_listener, api).await });
    tracing::info!(%gw_addr, "gateway listening");
    eprintln!("warren: api listening on http://{api_addr}");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = api_task => r?.context("the API server failed")?,
        r = gw_task => r?.context("the gateway failed")?,
        r = edge_task => r?.context("the edge failed")?,
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    // Warm VMs belong to nobody yet: they go. Workspaces keep running; the next start
    // adopts them.
    backend.drain_warm_pool().await;
    eprintln!("warren: server stopped; workspaces keep running and are adopted at the next start");
    Ok(0)
}

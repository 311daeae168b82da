//! A real Kubernetes control plane for tests: etcd and kube-apiserver on free loopback ports, with no
//! controller-manager and no scheduler (so a Deployment makes no pods: tests create pods themselves, and
//! the `ServiceAccount` admission plugin is off so a pod needs no token controller).
//!
//! The binaries come from `tests/k8s/install.sh`, which caches them in `$TIDEWATCH_TOOLS` (default
//! `~/.cache/tidewatch-tools`); etcd may also be on `PATH`.
//!
//! ```ignore
//! let cluster = KubeCluster::start().await;
//! let admin: kube::Client = cluster.client().await;
//! let sa = cluster.service_account("tidewatch", "tidewatch").await; // a kubeconfig file for it
//! // run the operator with KUBECONFIG=sa.kubeconfig, or sa.client().await
//! ```

use super::free_port;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ::kube::api::{Api, ObjectMeta, PostParams};
use ::kube::config::{KubeConfigOptions, Kubeconfig};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
};

/// The issuer the API server puts in service-account tokens.
pub const SERVICE_ACCOUNT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// The admin user's bearer token (in the group `system:masters`).
const ADMIN_TOKEN: &str = "tidewatch-test-admin-token";

/// The directory `tests/k8s/install.sh` caches its binaries in.
pub fn tools_dir() -> PathBuf {
    match std::env::var_os("TIDEWATCH_TOOLS") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
            .join(".cache/tidewatch-tools"),
    }
}

/// A tool installed by `tests/k8s/install.sh`: the tools directory first, then `PATH`. Panics, saying
/// how to install it, when it is nowhere.
pub fn tool(name: &str) -> PathBuf {
    let cached = tools_dir().join(name);
    if cached.is_file() {
        return cached;
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!(
        "{name} not found in {} nor on PATH: run tests/k8s/install.sh (tests/run.sh does) to install it",
        tools_dir().display()
    )
}

/// A process killed (and reaped) on drop; its output goes to a log file for failure messages.
struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &'static str, cmd: &mut Command, log: PathBuf) -> Proc {
        let file = std::fs::File::create(&log).expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name} ({:?}): {e}", cmd.get_program()));
        Proc { name, child, log }
    }

    /// The last lines of the process's output.
    fn tail(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(format!("{} exited ({status}):\n{}", self.name, self.tail())),
            _ => None,
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// etcd and kube-apiserver, both killed when this is dropped.
pub struct KubeCluster {
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    /// The CA that signed the API server's serving certificate (PEM).
    pub ca_pem: String,
    /// A kubeconfig for the admin user (group `system:masters`).
    pub admin_kubeconfig: PathBuf,
    apiserver_bin: PathBuf,
    apiserver_args: Vec<std::ffi::OsString>,
    // Dropped in declaration order: the API server before etcd, then the files.
    apiserver: Proc,
    etcd: Proc,
    dir: tempfile::TempDir,
}

impl KubeCluster {
    /// Starts etcd and kube-apiserver on free loopback ports and waits until `/readyz` says ready.
    pub async fn start() -> KubeCluster {
        let etcd_bin = tool("etcd");
        let apiserver_bin = tool("kube-apiserver");
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();

        let (client_port, peer_port) = (free_port(), free_port());
        let etcd_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let mut etcd = Proc::spawn(
            "etcd",
            Command::new(&etcd_bin)
                .arg("--name=test")
                .arg(format!("--data-dir={}", d.join("etcd").display()))
                .arg(format!("--listen-client-urls={etcd_url}"))
                .arg(format!("--advertise-client-urls={etcd_url}"))
                .arg(format!("--listen-peer-urls={peer_url}"))
                .arg(format!("--initial-advertise-peer-urls={peer_url}"))
                .arg(format!("--initial-cluster=test={peer_url}"))
                // Debian's etcd reads ETCD_* settings from /etc/default/etcd when run as a service;
                // here only the flags count.
                .env_remove("ETCD_NAME")
                .env_remove("ETCD_DATA_DIR")
                .env_remove("ETCD_LISTEN_CLIENT_URLS"),
            d.join("etcd.log"),
        );
        wait_tcp(client_port, &mut etcd, Duration::from_secs(30));

        // The serving certificate, signed by a CA of our own that the kubeconfigs trust.
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "tidewatch test cluster CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key")).expect("CA");
        let mut serving = CertificateParams::new(vec![
            "127.0.0.1".to_owned(),
            "localhost".to_owned(),
            "kubernetes.default.svc".to_owned(),
        ])
        .expect("serving params");
        serving
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let serving_key = KeyPair::generate().expect("serving key");
        let serving_cert = serving.signed_by(&serving_key, &ca).expect("serving cert");
        let write = |name: &str, text: &str| {
            let p = d.join(name);
            std::fs::write(&p, text).expect("write file");
            p
        };
        let ca_pem = ca.pem();
        let ca_file = write("ca.crt", &ca_pem);
        let cert_file = write("apiserver.crt", &format!("{}{}", serving_cert.pem(), ca_pem));
        let key_file = write("apiserver.key", &serving_key.serialize_pem());
        // The key service-account tokens are signed with (ES256) and checked against.
        let sa_key = KeyPair::generate().expect("service-account key");
        let sa_key_file = write("sa.key", &sa_key.serialize_pem());
        let sa_pub_file = write("sa.pub", &sa_key.public_key_pem());
        let tokens_file = write(
            "tokens.csv",
            &format!("{ADMIN_TOKEN},admin,admin-uid,system:masters\n"),
        );

        let port = free_port();
        let mut apiserver_cmd = Command::new(&apiserver_bin);
        apiserver_cmd
            .arg(format!("--etcd-servers={etcd_url}"))
            .arg("--bind-address=127.0.0.1")
            .arg("--advertise-address=127.0.0.1")
            .arg(format!("--secure-port={port}"))
            .arg(format!("--cert-dir={}", d.join("certs").display()))
            .arg(format!("--tls-cert-file={}", cert_file.display()))
            .arg(format!("--tls-private-key-file={}", key_file.display()))
            .arg(format!("--token-auth-file={}", tokens_file.display()))
            .arg(format!("--service-account-issuer={SERVICE_ACCOUNT_ISSUER}"))
            .arg(format!("--service-account-key-file={}", sa_pub_file.display()))
            .arg(format!(
                "--service-account-signing-key-file={}",
                sa_key_file.display()
            ))
            .arg("--authorization-mode=RBAC")
            .arg("--anonymous-auth=false")
            .arg("--service-cluster-ip-range=10.96.0.0/16")
            .arg("--allow-privileged=true")
            // No token controller runs here, so pods must not need their service account's token.
            .arg("--disable-admission-plugins=ServiceAccount")
            .arg("--enable-priority-and-fairness=false")
            .arg("--profiling=false")
            .arg("--v=1");
        let apiserver_args: Vec<std::ffi::OsString> =
            apiserver_cmd.get_args().map(ToOwned::to_owned).collect();
        let apiserver = Proc::spawn("kube-apiserver", &mut apiserver_cmd, d.join("kube-apiserver.log"));
        let url = format!("https://127.0.0.1:{port}");
        let admin_kubeconfig = d.join("admin.kubeconfig");
        write_kubeconfig(&admin_kubeconfig, &url, &ca_file, "admin", ADMIN_TOKEN);

        let mut cluster = KubeCluster {
            url,
            ca_pem,
            admin_kubeconfig,
            apiserver_bin,
            apiserver_args,
            apiserver,
            etcd,
            dir,
        };
        cluster.wait_ready().await;
        cluster
    }

    /// Polls `/readyz` (as admin) until it answers `ok`; panics with both logs after two minutes.
    async fn wait_ready(&mut self) {
        let client = self.client().await;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let req = http::Request::get("/readyz").body(Vec::new()).expect("request");
            let last = match client.request_text(req).await {
                Ok(body) if body.trim() == "ok" => break,
                Ok(body) => body,
                Err(e) => e.to_string(),
            };
            for p in [&mut self.apiserver, &mut self.etcd] {
                if let Some(why) = p.exited() {
                    panic!("{why}");
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "kube-apiserver not ready after 2 minutes; last /readyz: {last}\n--- kube-apiserver:\n{}\n--- etcd:\n{}",
                    self.apiserver.tail(),
                    self.etcd.tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Kills the API server (every connection and watch drops), keeps it down for `down_for`, starts it
    /// again on the same port and waits until it is ready. etcd, and so every object, stays.
    pub async fn restart_apiserver(&mut self, down_for: Duration) {
        let log = self.dir.path().join("kube-apiserver-restarted.log");
        let _ = self.apiserver.child.kill();
        let _ = self.apiserver.child.wait();
        tokio::time::sleep(down_for).await;
        self.apiserver = Proc::spawn(
            "kube-apiserver",
            Command::new(&self.apiserver_bin).args(&self.apiserver_args),
            log,
        );
        self.wait_ready().await;
    }

    /// A client for the admin user (`system:masters`: every verb on everything).
    pub async fn client(&self) -> ::kube::Client {
        client_from_kubeconfig(&self.admin_kubeconfig).await
    }

    /// A scratch directory that lives as long as the cluster.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The API server's log so far (for failure messages).
    pub fn apiserver_log(&self) -> String {
        std::fs::read_to_string(&self.apiserver.log).unwrap_or_default()
    }

    /// Creates the namespace if it is missing.
    pub async fn ensure_namespace(&self, name: &str) {
        let api: Api<Namespace> = Api::all(self.client().await);
        if api.get_opt(name).await.expect("get namespace").is_none() {
            let ns = Namespace {
                metadata: ObjectMeta {
                    name: Some(name.to_owned()),
                    ..ObjectMeta::default()
                },
                ..Namespace::default()
            };
            api.create(&PostParams::default(), &ns)
                .await
                .expect("create namespace");
        }
    }

    /// Creates the service account (and its namespace) if missing, gets it a one-hour token through
    /// the TokenRequest API, and writes a kubeconfig for it. RBAC for it is the caller's to apply.
    pub async fn service_account(&self, namespace: &str, name: &str) -> ServiceAccountAccess {
        self.ensure_namespace(namespace).await;
        let api: Api<ServiceAccount> = Api::namespaced(self.client().await, namespace);
        if api.get_opt(name).await.expect("get service account").is_none() {
            let sa = ServiceAccount {
                metadata: ObjectMeta {
                    name: Some(name.to_owned()),
                    namespace: Some(namespace.to_owned()),
                    ..ObjectMeta::default()
                },
                ..ServiceAccount::default()
            };
            api.create(&PostParams::default(), &sa)
                .await
                .expect("create service account");
        }
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![SERVICE_ACCOUNT_ISSUER.to_owned()],
                expiration_seconds: Some(3600),
                ..TokenRequestSpec::default()
            },
            ..TokenRequest::default()
        };
        let token = api
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .expect("TokenRequest")
            .status
            .expect("TokenRequest status")
            .token;
        let kubeconfig = self.dir.path().join(format!("{namespace}-{name}.kubeconfig"));
        write_kubeconfig(
            &kubeconfig,
            &self.url,
            &self.dir.path().join("ca.crt"),
            &format!("system:serviceaccount:{namespace}:{name}"),
            &token,
        );
        ServiceAccountAccess {
            username: format!("system:serviceaccount:{namespace}:{name}"),
            token,
            kubeconfig,
            namespace: namespace.to_owned(),
        }
    }
}

/// What `KubeCluster::service_account` hands back.
pub struct ServiceAccountAccess {
    /// `system:serviceaccount:NS:NAME`.
    pub username: String,
    /// A bearer token for it, valid for an hour.
    pub token: String,
    /// A kubeconfig file that authenticates as it (default namespace: its own): give it to the operator
    /// as `KUBECONFIG`.
    pub kubeconfig: PathBuf,
    pub namespace: String,
}

impl ServiceAccountAccess {
    /// A client that acts as the service account.
    pub async fn client(&self) -> ::kube::Client {
        client_from_kubeconfig(&self.kubeconfig).await
    }
}

/// Builds a client from a kubeconfig file, the way the operator does from `KUBECONFIG`.
pub async fn client_from_kubeconfig(path: &Path) -> ::kube::Client {
    let kubeconfig = Kubeconfig::read_from(path).expect("read kubeconfig");
    let config = ::kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig to client config");
    ::kube::Client::try_from(config).expect("kube client")
}

fn write_kubeconfig(path: &Path, url: &str, ca_file: &Path, user: &str, token: &str) {
    let yaml = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": {
            "server": url,
            "certificate-authority": ca_file,
        }}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": user, "namespace": "default"}}],
        "current-context": "test",
    });
    // JSON is YAML.
    std::fs::write(path, serde_json::to_string_pretty(&yaml).expect("json")).expect("write kubeconfig");
}

fn wait_tcp(port: u16, proc: &mut Proc, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(why) = proc.exited() {
            panic!("{why}");
        }
        if Instant::now() > deadline {
            panic!(
                "{} not listening on {port} after {timeout:?}:\n{}",
                proc.name,
                proc.tail()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

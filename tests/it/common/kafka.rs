//! A real Apache Kafka broker for the tests: KRaft mode (no ZooKeeper), one node that is both broker and
//! controller, on free loopback ports, from the jars `tests/kafka/install.sh` fetches from Maven Central.
//! Started with `kafka.tools.StorageTool format --standalone` and `kafka.Kafka server.properties`, waited
//! on by condition (its log says it started, and its metadata answers).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;

/// Where the install script puts the broker's jars.
fn libs() -> PathBuf {
    let tools = std::env::var_os("TIDEWATCH_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/tidewatch-tools")
        });
    let libs = tools.join("kafka/libs");
    assert!(
        libs.join("kafka-clients-4.3.1.jar").is_file() || libs.is_dir(),
        "no Kafka jars in {}: run tests/kafka/install.sh (tests/run.sh does)",
        libs.display()
    );
    libs
}

/// A running single-node cluster, stopped when dropped.
pub struct Kafka {
    dir: tempfile::TempDir,
    child: Option<Child>,
    pub port: u16,
    starts: usize,
}

impl Kafka {
    pub fn start() -> Kafka {
        let dir = tempfile::tempdir().expect("tempdir");
        let (port, controller) = (free_port(), free_port());
        let d = dir.path();
        std::fs::write(
            d.join("server.properties"),
            format!(
                "process.roles=broker,controller\n\
                 node.id=1\n\
                 controller.quorum.bootstrap.servers=127.0.0.1:{controller}\n\
                 listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}\n\
                 advertised.listeners=PLAINTEXT://127.0.0.1:{port}\n\
                 controller.listener.names=CONTROLLER\n\
                 listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT\n\
                 inter.broker.listener.name=PLAINTEXT\n\
                 log.dirs={}\n\
                 offsets.topic.replication.factor=1\n\
                 offsets.topic.num.partitions=3\n\
                 transaction.state.log.replication.factor=1\n\
                 transaction.state.log.min.isr=1\n\
                 share.coordinator.state.topic.replication.factor=1\n\
                 share.coordinator.state.topic.min.isr=1\n\
                 group.initial.rebalance.delay.ms=0\n\
                 auto.create.topics.enable=false\n",
                d.join("data").display()
            ),
        )
        .expect("server.properties");
        std::fs::write(
            d.join("log4j2.properties"),
            format!(
                "rootLogger.level = INFO\nrootLogger.appenderRef.f.ref = F\nappender.f.type = File\n\
                 appender.f.name = F\nappender.f.fileName = {}\nappender.f.layout.type = PatternLayout\n\
                 appender.f.layout.pattern = [%d] %p %m (%c)%n\n",
                d.join("broker.log").display()
            ),
        )
        .expect("log4j2.properties");
        let status = java(d)
            .args([
                "kafka.tools.StorageTool",
                "format",
                "--standalone",
                "-t",
                "MkU3OEVBNTcwNTJENDM2Qk",
                "-c",
            ])
            .arg(d.join("server.properties"))
            .stdout(Stdio::null())
            .status()
            .expect("run kafka.tools.StorageTool");
        assert!(status.success(), "formatting the Kafka log directory failed");
        let mut k = Kafka {
            dir,
            child: None,
            port,
            starts: 0,
        };
        k.resume();
        k
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("broker.log")).unwrap_or_default()
    }

    /// Starts the broker process again (after [`Kafka::stop`]) and waits until it serves.
    pub fn resume(&mut self) {
        let d = self.dir.path();
        let out = std::fs::File::create(d.join(format!("stdout-{}.log", self.starts))).expect("stdout");
        let child = java(d)
            .arg("kafka.Kafka")
            .arg(d.join("server.properties"))
            .stdout(out.try_clone().expect("dup"))
            .stderr(out)
            .spawn()
            .expect("start kafka.Kafka");
        self.child = Some(child);
        self.starts += 1;
        let deadline = Instant::now() + Duration::from_secs(300);
        while self.log().matches("Kafka Server started").count() < self.starts {
            assert!(Instant::now() < deadline, "Kafka did not start:\n{}", self.log());
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!("Kafka exited with {status}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops the broker (SIGTERM, a clean shutdown) and waits for the process to end.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(120);
            while c.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = c.kill();
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// Creates `topic` with `partitions` partitions, waiting until the cluster confirms it.
    pub fn create_topic(&self, topic: &str, partitions: i32) {
        self.create_topic_with(topic, partitions, &[]);
    }

    /// A topic with topic-level settings (`max.message.bytes`, ...).
    pub fn create_topic_with(&self, topic: &str, partitions: i32, config: &[(&str, &str)]) {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .create()
            .expect("admin client");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(60)));
        let res = rt
            .block_on(admin.create_topics(
                &[config.iter().fold(
                    NewTopic::new(topic, partitions, TopicReplication::Fixed(1)),
                    |t, (k, v)| t.set(k, v),
                )],
                &opts,
            ))
            .expect("create topic");
        for r in res {
            r.unwrap_or_else(|(t, e)| panic!("creating topic {t}: {e}"));
        }
        // The controller has the topic; wait until the broker's metadata has it too, so that a role
        // started next finds it.
        let client = admin.inner();
        crate::common::wait_for(
            &format!("topic {topic} in the broker's metadata"),
            Duration::from_secs(60),
            || match client.fetch_metadata(Some(topic), Duration::from_secs(5)) {
                Ok(md)
                    if md.topics().iter().any(|t| {
                        t.name() == topic
                            && t.error().is_none()
                            && t.partitions().len() == partitions as usize
                    }) =>
                {
                    Ok(())
                }
                Ok(_) => Err("not yet".into()),
                Err(e) => Err(e.to_string()),
            },
        );
    }
}

fn java(dir: &std::path::Path) -> Command {
    let mut c = Command::new("java");
    c.arg("-Xms128m")
        .arg("-Xmx512m")
        .arg(format!(
            "-Dlog4j2.configurationFile={}",
            dir.join("log4j2.properties").display()
        ))
        .arg("-cp")
        .arg(format!("{}/*", libs().display()));
    c
}

impl Drop for Kafka {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The OpenTelemetry Collector that `bench/peers/install.sh otelcol` builds with the Collector builder (OCB),
/// with the contrib kafkaexporter and kafkareceiver (`tests/kafka/install.sh` runs that step).
pub struct Otelcol {
    child: Child,
    dir: tempfile::TempDir,
    /// OTLP/gRPC and OTLP/HTTP, `127.0.0.1:port`.
    pub grpc: String,
    pub http: String,
}

impl Otelcol {
    /// The collector's executable; a clear failure when it was not built.
    pub fn binary() -> PathBuf {
        let peers = std::env::var_os("TIDEWATCH_PEERS")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/tidewatch-peers")
            });
        let bin = peers.join("bin/otelcol-tidewatch-bench");
        assert!(
            bin.is_file(),
            "no {}: run tests/kafka/install.sh (tests/run.sh does)",
            bin.display()
        );
        bin
    }

    /// Starts the collector with the configuration `config(grpc, http)` returns for its two OTLP
    /// endpoints, and waits until it says it is ready.
    pub fn start(config: impl FnOnce(&str, &str) -> String) -> Otelcol {
        let dir = tempfile::tempdir().expect("tempdir");
        let grpc = format!("127.0.0.1:{}", free_port());
        let http = format!("127.0.0.1:{}", free_port());
        let path = dir.path().join("otelcol.yaml");
        std::fs::write(&path, config(&grpc, &http)).expect("otelcol.yaml");
        let log = std::fs::File::create(dir.path().join("otelcol.log")).expect("log");
        let child = Command::new(Otelcol::binary())
            .arg("--config")
            .arg(&path)
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("start the OTel Collector");
        let mut c = Otelcol {
            child,
            dir,
            grpc,
            http,
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        while !c.log().contains("Everything is ready") {
            if let Ok(Some(status)) = c.child.try_wait() {
                panic!("the OTel Collector exited with {status}:\n{}", c.log());
            }
            assert!(
                Instant::now() < deadline,
                "the OTel Collector did not start:\n{}",
                c.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        c
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("otelcol.log")).unwrap_or_default()
    }
}

impl Drop for Otelcol {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

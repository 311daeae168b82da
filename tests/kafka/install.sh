#!/usr/bin/env bash
# Installs what the Kafka tests need (tests/it/kafka.rs, tests/it/common/kafka.rs), idempotently: an Apache Kafka
# broker (KRaft mode, no ZooKeeper) as the jars of org.apache.kafka:kafka_2.13 and their dependencies, fetched
# from Maven Central with `mvn dependency:copy-dependencies` into
# ${TIDEWATCH_TOOLS:-$HOME/.cache/tidewatch-tools}/kafka-<version>/libs; a second run does nothing.
# Also the Debian packages the rdkafka crate needs to build its bundled librdkafka (a C compiler, make, perl
# for OpenSSL's configuration probe, pkg-config and the OpenSSL headers for `security.protocol: ssl`), and the
# JRE (17+) and Maven the broker needs. And the OpenTelemetry Collector with the contrib kafkaexporter (built
# by bench/peers/install.sh otelcol, with Go) that tests/it/kafka.rs has write a topic the analyzers read.
set -euo pipefail

KAFKA_VERSION=4.3.1
TOOLS="${TIDEWATCH_TOOLS:-$HOME/.cache/tidewatch-tools}"
DIR="$TOOLS/kafka-$KAFKA_VERSION"

log() { echo "tests/kafka/install.sh: $*" >&2; }

apt_install() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

apt_install gcc g++ make perl pkg-config libssl-dev openjdk-17-jre-headless maven

if [ ! -f "$DIR/libs/.complete-2" ]; then
  mkdir -p "$DIR/libs"
  log "fetching org.apache.kafka:kafka_2.13:$KAFKA_VERSION and its dependencies from Maven Central"
  pom="$(mktemp -d)"
  cat >"$pom/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>tidewatch.test</groupId>
  <artifactId>kafka-broker</artifactId>
  <version>1</version>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>$KAFKA_VERSION</version>
    </dependency>
    <!-- The broker logs through slf4j 1.x; this routes it to the log4j2 it ships (tests write broker.log). -->
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>2.25.4</version>
    </dependency>
  </dependencies>
</project>
POM
  (cd "$pom" && mvn -q -B dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$DIR/libs")
  rm -rf "$pom"
  touch "$DIR/libs/.complete-2"
fi
ln -sfn "kafka-$KAFKA_VERSION" "$TOOLS/kafka"
log "kafka: $DIR/libs ($(ls "$DIR/libs" | wc -l) jars)"
"$(dirname "${BASH_SOURCE[0]}")/../../bench/peers/install.sh" otelcol

//! A real OCI registry for tests: Debian's `docker-registry` (CNCF distribution 2.8), started
//! on a loopback port with its storage in a temporary directory, and helpers that push fixture
//! content to it over the OCI API.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use layerline_core::oci::{DOCKER_MANIFEST, sha256};
use serde_json::json;

/// A `docker-registry` of its own, stopped when dropped.
pub struct Registry {
    child: Child,
    pub base: String,
    /// Its configuration and storage (and whatever else a test keeps there).
    pub dir: tempfile::TempDir,
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Registry {
    pub async fn start() -> Registry {
        Registry::start_at(free_port(), "").await
    }

    /// A registry on `port`, with `extra` appended to its configuration.
    pub async fn start_at(port: u16, extra: &str) -> Registry {
        Registry::start_with(port, "", extra, tempfile::tempdir().unwrap()).await
    }

    /// A registry on `port` with `http` lines added to its `http:` section and `extra`
    /// appended, keeping its files in `dir`.
    pub async fn start_with(
        port: u16,
        http: &str,
        extra: &str,
        dir: tempfile::TempDir,
    ) -> Registry {
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{http}{extra}",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("Debian's docker-registry must be installed (.ci/run installs it)");
        let scheme = if http.contains("tls:") {
            "https"
        } else {
            "http"
        };
        let base = format!("{scheme}://127.0.0.1:{port}");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "registry did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Registry { child, base, dir }
    }

    /// Uploads `bytes` as a blob of `repo` (monolithic upload); returns its digest.
    pub async fn blob(&self, repo: &str, bytes: &[u8]) -> String {
        let http = reqwest::Client::new();
        let res = http
            .post(format!("{}/v2/{repo}/blobs/uploads/", self.base))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 202);
        let location = res.headers()["location"].to_str().unwrap().to_owned();
        let location = if location.starts_with('/') {
            format!("{}{location}", self.base)
        } else {
            location
        };
        let digest = sha256(bytes);
        let sep = if location.contains('?') { '&' } else { '?' };
        let res = http
            .put(format!("{location}{sep}digest={digest}"))
            .header("content-type", "application/octet-stream")
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
        digest
    }

    /// Puts manifest `body` under `reference`; returns its digest.
    pub async fn manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> String {
        let res = reqwest::Client::new()
            .put(format!("{}/v2/{repo}/manifests/{reference}", self.base))
            .header("content-type", media_type)
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
        sha256(body)
    }

    /// An image manifest of `media_type` with a config and `layers` (contents), pushed
    /// under `tag`; returns its digest and bytes.
    pub async fn image(
        &self,
        repo: &str,
        tag: &str,
        media_type: &str,
        layers: &[&str],
    ) -> (String, Vec<u8>) {
        let config = json!({"architecture": "amd64", "os": "linux", "tag": tag}).to_string();
        let config_digest = self.blob(repo, config.as_bytes()).await;
        let (config_type, layer_type) = if media_type == DOCKER_MANIFEST {
            (
                "application/vnd.docker.container.image.v1+json",
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
            )
        } else {
            (
                "application/vnd.oci.image.config.v1+json",
                "application/vnd.oci.image.layer.v1.tar+gzip",
            )
        };
        let mut descriptors = Vec::new();
        for l in layers {
            let digest = self.blob(repo, l.as_bytes()).await;
            descriptors.push(json!({"mediaType": layer_type, "digest": digest, "size": l.len()}));
        }
        let body = json!({
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": {"mediaType": config_type, "digest": config_digest, "size": config.len()},
            "layers": descriptors,
        })
        .to_string()
        .into_bytes();
        let digest = self.manifest(repo, tag, media_type, &body).await;
        (digest, body)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

//! A client for OCI distribution registries: the part of the protocol import and backend
//! registries use (`api-contract.md` §4), on `reqwest`.
//!
//! * Every manifest request sends all four manifest media types in `Accept` (without the OCI
//!   types CNCF distribution answers 404 for OCI manifests; without the Docker v2 type it may
//!   convert to schema 1, a different digest).
//! * A fetched manifest is verified: its bytes must hash to the digest asked for, or to the
//!   `Docker-Content-Digest` the registry sent, and they are bounded in size.
//! * Auth: anonymous, basic, and the bearer-token flow (a 401 with `WWW-Authenticate: Bearer
//!   realm=…,service=…,scope=…` sends us to the realm for a token, with the basic credentials
//!   when there are some). Credentials are sent only after the registry challenged us, and
//!   only to the registry's own host (and to its token service's host, when it is another
//!   one the operator named): never on a first request, never to a host a `Link` or a realm
//!   points at.
//! * Where the service may connect ([`Egress`]): a client made [`Client::guarded`] reaches
//!   only the hosts `LAYERLINE_REGISTRY_ALLOW` lists, when it is set, and never a loopback,
//!   private, link-local (cloud metadata) or otherwise non-public address, checked after
//!   name resolution and on every redirect, unless the list names that host.
//! * 429 and 5xx answers are retried, honouring `Retry-After` (seconds), a few times.
//! * Requests in flight are bounded per client.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::sync::{Mutex, Semaphore};

use crate::domain::event::{Blob, ManifestRecorded};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// The `Accept` of every manifest request.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";
/// The largest manifest accepted (CNCF distribution refuses to store larger ones).
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;
/// Most referrers read of one manifest (an import of a tag reads those of each manifest it
/// records, and theirs).
pub const MAX_REFERRERS: usize = 1_000;
/// Entries asked for per catalog or tag list page.
pub const PAGE: usize = 100;
/// Environment variable naming a PEM file of CA certificates trusted for registries, besides
/// the public roots (webpki).
pub const CA_FILE_ENV: &str = "LAYERLINE_REGISTRY_CA_FILE";

/// Why a registry request failed. `is_transient` says whether trying later may help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OciError {
    #[error("{what} not found at {registry}")]
    NotFound { registry: String, what: String },
    #[error("{registry} refused the credentials ({status})")]
    Unauthorized { registry: String, status: u16 },
    /// The registry's answer body (`message`) is kept for the log, never shown: it may name
    /// the registry's storage paths.
    #[error("{url} answered {status}")]
    Status {
        url: String,
        status: u16,
        message: String,
    },
    #[error("manifest {reference}: its bytes hash to {actual}, not {expected}")]
    DigestMismatch {
        reference: String,
        expected: String,
        actual: String,
    },
    #[error("manifest {reference}: {reason}")]
    BadManifest { reference: String, reason: String },
    /// The host is not one this service may reach ([`Egress`]): final.
    #[error("{host} is not a registry this service may reach: {reason}")]
    Refused { host: String, reason: String },
    #[error("{0}")]
    Transport(String),
}

impl OciError {
    pub fn is_transient(&self) -> bool {
        match self {
            OciError::Transport(_) => true,
            OciError::Status { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }
}

#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    Anonymous,
    Basic { username: String, password: String },
}

// Never print a password.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Anonymous => f.write_str("Anonymous"),
            Credentials::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
        }
    }
}

/// A manifest as fetched: its verified digest, media type and bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub digest: String,
    pub media_type: String,
    pub body: Vec<u8>,
}

/// A manifest's content: an image (config and layers) or an index (child manifests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    Image {
        config: Option<Blob>,
        layers: Vec<Blob>,
    },
    /// `(digest, platform)` of each child, `platform` as `os/arch[/variant]`.
    Index {
        children: Vec<(String, Option<String>)>,
    },
}

#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    credentials: Credentials,
    /// The host of the registry's token service, when it is not the registry's own host
    /// and may be sent the basic credentials.
    token_host: Option<String>,
    token: Arc<Mutex<Option<String>>>,
    /// The registry answered a `Basic` challenge: later requests send the credentials
    /// straight away.
    basic: Arc<std::sync::atomic::AtomicBool>,
    /// The registry answered that it has no referrers API: it is not asked again.
    no_referrers: Arc<std::sync::atomic::AtomicBool>,
    in_flight: Arc<Semaphore>,
    /// Retries of a 429/5xx/transport failure.
    retries: u32,
    /// Where it may connect, when guarded.
    egress: Option<Egress>,
    /// Entries asked for per catalog or tag list page.
    page: usize,
}

impl Client {
    /// A client of the registry at `base` (`https://host[:port]` or `http://…`), with at most
    /// `concurrency` requests in flight.
    pub fn new(base: &str, credentials: Credentials, concurrency: usize) -> Result<Self, OciError> {
        let base = base.trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(OciError::Transport(format!(
                "registry {base}: expected an http:// or https:// URL"
            )));
        }
        let http = shared_http()?;
        Ok(Client {
            http,
            base: base.to_owned(),
            credentials,
            token_host: None,
            token: Arc::new(Mutex::new(None)),
            basic: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            no_referrers: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            in_flight: Arc::new(Semaphore::new(concurrency.max(1))),
            retries: 4,
            page: PAGE,
            egress: None,
        })
    }

    /// This client, reaching only what the process's [`Egress`] allows (the operator's
    /// `LAYERLINE_REGISTRY_ALLOW`): what the service uses for every source, backend and
    /// notifying registry. Refuses a base URL outside it at once.
    pub fn guarded(mut self) -> Result<Self, OciError> {
        let egress = Egress::from_env();
        egress.check_url(&self.base)?;
        self.http = guarded_http()?;
        self.egress = Some(egress);
        Ok(self)
    }

    /// Trusts the CA certificate `pem` besides the public roots (and the configured CA).
    pub fn with_root_certificate(mut self, pem: &[u8]) -> Result<Self, OciError> {
        let cert =
            reqwest::Certificate::from_pem(pem).map_err(|e| OciError::Transport(e.to_string()))?;
        self.http = http_client(Some(cert)).map_err(OciError::Transport)?;
        Ok(self)
    }

    /// Lets the basic credentials go to `host` (`host[:port]`) too, when a bearer challenge's
    /// realm is there: the registry's token service on a host of its own.
    pub fn with_token_host(mut self, host: Option<String>) -> Self {
        self.token_host = host.map(|h| h.to_ascii_lowercase());
        self
    }

    /// Asks for `n` entries per catalog or tag list page (the registry may send fewer).
    pub fn with_page_size(mut self, n: usize) -> Self {
        self.page = n.max(1);
        self
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Checks the registry speaks the distribution API and accepts our credentials.
    pub async fn probe(&self) -> Result<(), OciError> {
        self.get("/v2/", None).await.map(drop)
    }

    /// Every repository of the registry, following `Link` pages.
    pub async fn catalog(&self) -> Result<Vec<String>, OciError> {
        #[derive(Deserialize)]
        struct Page {
            #[serde(default)]
            repositories: Option<Vec<String>>,
        }
        let mut out = Vec::new();
        let mut next = Some(format!("/v2/_catalog?n={}", self.page));
        while let Some(path) = next.take() {
            let res = self.get(&path, None).await?;
            next = next_link(&res);
            let page: Page = json(res, &path).await?;
            out.extend(page.repositories.unwrap_or_default());
        }
        Ok(out)
    }

    /// Every tag of `repository`, following `Link` pages.
    pub async fn tags(&self, repository: &str) -> Result<Vec<String>, OciError> {
        #[derive(Deserialize)]
        struct Page {
            #[serde(default)]
            tags: Option<Vec<String>>,
        }
        let mut out = Vec::new();
        let mut next = Some(format!("/v2/{repository}/tags/list?n={}", self.page));
        while let Some(path) = next.take() {
            let res = match self.get(&path, None).await {
                Err(OciError::Status { status: 404, .. }) => {
                    return Err(OciError::NotFound {
                        registry: self.base.clone(),
                        what: format!("repository {repository}"),
                    });
                }
                other => other?,
            };
            next = next_link(&res);
            let page: Page = json(res, &path).await?;
            out.extend(page.tags.unwrap_or_default());
        }
        Ok(out)
    }

    /// The digests of the manifests attached to manifest `digest` of `repository`, as the
    /// OCI 1.1 referrers API lists them (an index, paged by `Link`); `None` when the registry
    /// has no referrers API (it answers 404, or 400/405 for a path it does not route), which
    /// is what CNCF distribution 2.8 does; a registry with the API never answers 404 to it
    /// (OCI distribution 1.1), so this client asks no more once it has. At most
    /// [`MAX_REFERRERS`] are read.
    pub async fn referrers(
        &self,
        repository: &str,
        digest: &str,
    ) -> Result<Option<Vec<String>>, OciError> {
        #[derive(Deserialize)]
        struct Descriptor {
            digest: String,
        }
        #[derive(Deserialize)]
        struct Page {
            #[serde(default)]
            manifests: Vec<Descriptor>,
        }
        use std::sync::atomic::Ordering::Relaxed;
        if self.no_referrers.load(Relaxed) {
            return Ok(None);
        }
        let mut out = Vec::new();
        let mut next = Some(format!("/v2/{repository}/referrers/{digest}"));
        while let Some(path) = next.take() {
            let res = match self.get(&path, Some(OCI_INDEX)).await {
                Err(OciError::Status {
                    status: 404 | 405, ..
                }) if out.is_empty() => {
                    self.no_referrers.store(true, Relaxed);
                    return Ok(None);
                }
                other => other?,
            };
            next = next_link(&res);
            let page: Page = json(res, &path).await?;
            for d in page.manifests {
                let hex = d.digest.strip_prefix("sha256:").unwrap_or_default();
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(OciError::BadManifest {
                        reference: format!("{repository}@{digest}"),
                        reason: format!("its referrers list {:?}, not a sha256 digest", d.digest),
                    });
                }
                out.push(d.digest);
            }
            if out.len() > MAX_REFERRERS {
                return Err(OciError::BadManifest {
                    reference: format!("{repository}@{digest}"),
                    reason: format!("more than {MAX_REFERRERS} referrers"),
                });
            }
        }
        Ok(Some(out))
    }

    /// Manifest `reference` (a tag or a digest) of `repository`, verified against its digest.
    pub async fn manifest(&self, repository: &str, reference: &str) -> Result<Fetched, OciError> {
        let path = format!("/v2/{repository}/manifests/{reference}");
        let named = format!("{repository}:{reference}");
        let res = match self.get(&path, Some(MANIFEST_ACCEPT)).await {
            Err(OciError::Status { status: 404, .. }) => {
                return Err(OciError::NotFound {
                    registry: self.base.clone(),
                    what: format!("manifest {named}"),
                });
            }
            other => other?,
        };
        let header = |name: &str| {
            res.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let media_type = header("content-type")
            .map(|t| t.split(';').next().unwrap_or_default().trim().to_owned())
            .unwrap_or_default();
        let sent_digest = header("docker-content-digest");
        if res
            .content_length()
            .is_some_and(|n| n as usize > MAX_MANIFEST_BYTES)
        {
            return Err(too_large(&named));
        }
        let body = res
            .bytes()
            .await
            .map_err(|e| OciError::Transport(e.to_string()))?;
        if body.len() > MAX_MANIFEST_BYTES {
            return Err(too_large(&named));
        }
        let actual = sha256(&body);
        let expected = if reference.starts_with("sha256:") {
            Some(reference.to_owned())
        } else {
            sent_digest
        };
        if let Some(expected) = expected
            && expected != actual
        {
            return Err(OciError::DigestMismatch {
                reference: named,
                expected,
                actual,
            });
        }
        let media_type = if media_type.is_empty() || media_type == "application/json" {
            // Some registries do not say; the manifest does.
            serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["mediaType"].as_str().map(str::to_owned))
                .unwrap_or_default()
        } else {
            media_type
        };
        Ok(Fetched {
            digest: actual,
            media_type,
            body: body.to_vec(),
        })
    }

    /// The digest manifest `reference` (a tag or a digest) of `repository` has at the
    /// registry now, asked with `HEAD` (the `Docker-Content-Digest` it answers); `None` when
    /// the registry has no such manifest.
    pub async fn resolve(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<Option<String>, OciError> {
        let path = format!("/v2/{repository}/manifests/{reference}");
        let res = match self
            .send(reqwest::Method::HEAD, &path, Some(MANIFEST_ACCEPT))
            .await
        {
            Err(OciError::Status { status: 404, .. }) => return Ok(None),
            other => other?,
        };
        let digest = res
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        match digest {
            Some(d) => Ok(Some(d)),
            // A registry that does not say: the manifest's own bytes do.
            None => self
                .manifest(repository, reference)
                .await
                .map(|f| Some(f.digest)),
        }
    }

    /// Deletes manifest `digest` of `repository`; one already gone is not an error.
    pub async fn delete_manifest(&self, repository: &str, digest: &str) -> Result<(), OciError> {
        let path = format!("/v2/{repository}/manifests/{digest}");
        match self.send(reqwest::Method::DELETE, &path, None).await {
            Ok(_) | Err(OciError::Status { status: 404, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn get(&self, path: &str, accept: Option<&str>) -> Result<reqwest::Response, OciError> {
        self.send(reqwest::Method::GET, path, accept).await
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        accept: Option<&str>,
    ) -> Result<reqwest::Response, OciError> {
        self.send_with(method, path, accept, None).await
    }

    /// Whether blob `digest` is in `repository`.
    pub async fn has_blob(&self, repository: &str, digest: &str) -> Result<bool, OciError> {
        let path = format!("/v2/{repository}/blobs/{digest}");
        match self.send(reqwest::Method::HEAD, &path, None).await {
            Ok(_) => Ok(true),
            Err(OciError::Status { status: 404, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Asks the registry to mount blob `digest` of its repository `from` into `repository`
    /// (no bytes move); false when it did not (it then expects an upload).
    pub async fn mount_blob(
        &self,
        repository: &str,
        digest: &str,
        from: &str,
    ) -> Result<bool, OciError> {
        let path = format!("/v2/{repository}/blobs/uploads/?mount={digest}&from={from}");
        let res = self.send(reqwest::Method::POST, &path, None).await?;
        Ok(res.status() == reqwest::StatusCode::CREATED)
    }

    /// Blob `digest` of `repository`, its body not yet read (stream it with
    /// `bytes_stream`), and its size when the registry says.
    pub async fn blob(
        &self,
        repository: &str,
        digest: &str,
    ) -> Result<(reqwest::Response, Option<u64>), OciError> {
        let path = format!("/v2/{repository}/blobs/{digest}");
        let res = match self.get(&path, None).await {
            Err(OciError::Status { status: 404, .. }) => {
                return Err(OciError::NotFound {
                    registry: self.base.clone(),
                    what: format!("blob {repository}@{digest}"),
                });
            }
            other => other?,
        };
        let size = res.content_length();
        Ok((res, size))
    }

    /// Uploads blob `digest` of `repository` from `body` (monolithic: one `POST` to open the
    /// upload, one `PUT` with the bytes). The registry checks the bytes against `digest`.
    /// A streamed body cannot be sent twice: a failed `PUT` is the caller's to retry.
    pub async fn push_blob(
        &self,
        repository: &str,
        digest: &str,
        size: Option<u64>,
        body: reqwest::Body,
    ) -> Result<(), OciError> {
        let path = format!("/v2/{repository}/blobs/uploads/");
        let res = self.send(reqwest::Method::POST, &path, None).await?;
        let location = res
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| OciError::Transport(format!("{path}: no upload location")))?;
        let location = if location.starts_with('/') {
            format!("{}{location}", self.base)
        } else {
            location.to_owned()
        };
        let sep = if location.contains('?') { '&' } else { '?' };
        let url = format!("{location}{sep}digest={digest}");
        let upload = Upload {
            content_type: "application/octet-stream".to_owned(),
            length: size,
            bytes: None,
            stream: std::sync::Mutex::new(Some(body)),
        };
        self.send_with(reqwest::Method::PUT, &url, None, Some(&upload))
            .await
            .map(drop)
    }

    /// Puts manifest `body` of `media_type` under `reference` (a tag or its digest).
    /// Pushes manifest `body` (of `media_type`) as `reference` (its digest or a tag) of
    /// `repository`; returns whether the registry says it processed the manifest's `subject`
    /// (its `OCI-Subject` answer, which only a registry with the referrers API gives).
    pub async fn put_manifest(
        &self,
        repository: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> Result<bool, OciError> {
        let path = format!("/v2/{repository}/manifests/{reference}");
        let upload = Upload {
            content_type: media_type.to_owned(),
            length: Some(body.len() as u64),
            bytes: Some(body.to_vec()),
            stream: std::sync::Mutex::new(None),
        };
        let res = self
            .send_with(reqwest::Method::PUT, &path, None, Some(&upload))
            .await?;
        Ok(res.headers().contains_key("oci-subject"))
    }

    /// Sends a request, fetching a bearer token when challenged and retrying 429/5xx and
    /// transport failures (a streamed body only while it was not sent); any other
    /// non-success answer is an error.
    async fn send_with(
        &self,
        method: reqwest::Method,
        path: &str,
        accept: Option<&str>,
        upload: Option<&Upload>,
    ) -> Result<reqwest::Response, OciError> {
        let url = if path.starts_with("http") {
            path.to_owned()
        } else {
            format!("{}{path}", self.base)
        };
        if let Some(egress) = &self.egress {
            egress.check_url(&url)?;
        }
        let _permit = self.in_flight.acquire().await.expect("never closed");
        let mut challenged = false;
        let mut attempt = 0;
        loop {
            let mut req = self.http.request(method.clone(), &url);
            if let Some(accept) = accept {
                req = req.header("accept", accept);
            }
            if let Some(upload) = upload {
                let Some(body) = upload.body() else {
                    return Err(OciError::Transport(format!(
                        "{url}: the upload was refused and its stream cannot be sent again"
                    )));
                };
                req = req.header("content-type", &upload.content_type).body(body);
                if let Some(n) = upload.length {
                    req = req.header("content-length", n);
                }
            }
            // What authenticates us goes only to the registry's own host.
            if same_host(&url, &self.base) {
                let token = self.token.lock().await.clone();
                let basic = self.basic.load(std::sync::atomic::Ordering::Relaxed);
                req = match (&token, &self.credentials) {
                    (Some(token), _) => req.bearer_auth(token),
                    (None, Credentials::Basic { username, password }) if basic => {
                        req.basic_auth(username, Some(password))
                    }
                    _ => req,
                };
            }
            let failure = match req.send().await {
                Ok(res) if res.status().is_success() => return Ok(res),
                Ok(res) if res.status() == 401 && !challenged && same_host(&url, &self.base) => {
                    challenged = true;
                    let challenge = res
                        .headers()
                        .get("www-authenticate")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    let challenge = challenge.as_deref().unwrap_or_default();
                    if let Some(c) = bearer_challenge(challenge) {
                        let token = self.fetch_token(&c).await?;
                        *self.token.lock().await = Some(token);
                        continue;
                    }
                    let basic_asked = challenge
                        .trim_start()
                        .get(..6)
                        .is_some_and(|s| s.eq_ignore_ascii_case("basic "));
                    if basic_asked && matches!(self.credentials, Credentials::Basic { .. }) {
                        self.basic.store(true, std::sync::atomic::Ordering::Relaxed);
                        continue;
                    }
                    return Err(self.unauthorized(401));
                }
                Ok(res) if matches!(res.status().as_u16(), 401 | 403) => {
                    return Err(self.unauthorized(res.status().as_u16()));
                }
                Ok(res) => {
                    let status = res.status().as_u16();
                    let retry_after = res
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok());
                    let message = res.text().await.unwrap_or_default();
                    let message: String = message.chars().take(300).collect();
                    tracing::debug!(%url, status, body = %message, "registry refused a request");
                    let err = OciError::Status {
                        url: url.clone(),
                        status,
                        message,
                    };
                    (err, retry_after)
                }
                // The egress guard's refusal of every address a name resolved to: final, and
                // said without the connection's error chain.
                Err(e) if chain(&e).contains(NO_ALLOWED_ADDRESS) => {
                    return Err(OciError::Refused {
                        host: host_of(&url).unwrap_or_default(),
                        reason: format!(
                            "{NO_ALLOWED_ADDRESS} (loopback, private and link-local ones need \
                             {ALLOW_ENV} to list the host)"
                        ),
                    });
                }
                Err(e) => (OciError::Transport(format!("{url}: {}", chain(&e))), None),
            };
            let (err, retry_after) = failure;
            if !err.is_transient() || attempt >= self.retries {
                return Err(err);
            }
            let wait = match retry_after {
                Some(secs) => Duration::from_secs(secs.min(30)),
                None => Duration::from_millis(200 << attempt),
            };
            attempt += 1;
            tokio::time::sleep(wait).await;
        }
    }

    fn unauthorized(&self, status: u16) -> OciError {
        OciError::Unauthorized {
            registry: self.base.clone(),
            status,
        }
    }

    /// Asks the challenge's realm for a token (with our basic credentials, if any).
    async fn fetch_token(&self, c: &Challenge) -> Result<String, OciError> {
        #[derive(Deserialize)]
        struct TokenBody {
            token: Option<String>,
            access_token: Option<String>,
        }
        let mut query = Vec::new();
        if let Some(service) = &c.service {
            query.push(("service", service.as_str()));
        }
        if let Some(scope) = &c.scope {
            query.push(("scope", scope.as_str()));
        }
        let mut req = self.http.get(&c.realm).query(&query);
        // The basic credentials go to the realm only when it is the registry's own host or
        // the token host the operator named with them.
        let trusted = same_host(&c.realm, &self.base)
            || self
                .token_host
                .as_deref()
                .is_some_and(|h| host_of(&c.realm).as_deref() == Some(h));
        if let Credentials::Basic { username, password } = &self.credentials
            && trusted
        {
            req = req.basic_auth(username, Some(password));
        }
        let res = req
            .send()
            .await
            .map_err(|e| OciError::Transport(format!("{}: {e}", c.realm)))?;
        if !res.status().is_success() {
            return Err(self.unauthorized(res.status().as_u16()));
        }
        let body: TokenBody = res
            .json()
            .await
            .map_err(|e| OciError::Transport(format!("{}: {e}", c.realm)))?;
        body.token
            .or(body.access_token)
            .ok_or_else(|| OciError::Transport(format!("{} sent no token", c.realm)))
    }
}

/// A request body: bytes, sent again on a retry, or a stream, sent once.
struct Upload {
    content_type: String,
    length: Option<u64>,
    bytes: Option<Vec<u8>>,
    stream: std::sync::Mutex<Option<reqwest::Body>>,
}

impl Upload {
    /// The body for the next attempt: none once a stream was sent.
    fn body(&self) -> Option<reqwest::Body> {
        match &self.bytes {
            Some(bytes) => Some(reqwest::Body::from(bytes.clone())),
            None => self.stream.lock().expect("never poisoned").take(),
        }
    }
}

/// The HTTP client every registry client shares (connections, TLS roots): built once per
/// process, trusting the public roots and the PEM file `LAYERLINE_REGISTRY_CA_FILE` names.
fn shared_http() -> Result<reqwest::Client, OciError> {
    static SHARED: std::sync::OnceLock<Result<reqwest::Client, String>> =
        std::sync::OnceLock::new();
    SHARED
        .get_or_init(|| http_client(None))
        .clone()
        .map_err(OciError::Transport)
}

/// The shared HTTP client of guarded registry clients: [`shared_http`]'s, with the process's
/// [`Egress`] checking every resolved address and every redirect.
fn guarded_http() -> Result<reqwest::Client, OciError> {
    static GUARDED: std::sync::OnceLock<Result<reqwest::Client, String>> =
        std::sync::OnceLock::new();
    GUARDED
        .get_or_init(|| {
            let egress = Egress::from_env();
            let redirects = egress.clone();
            let builder = base_builder()
                .dns_resolver(Arc::new(GuardedResolver { egress }))
                .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                    if attempt.previous().len() >= 10 {
                        attempt.error("too many redirects")
                    } else if redirects.check_url(attempt.url().as_str()).is_ok() {
                        attempt.follow()
                    } else {
                        attempt.error("redirected to a host registries are not reached at")
                    }
                }));
            with_roots(builder, None)
        })
        .clone()
        .map_err(OciError::Transport)
}

/// A new HTTP client trusting the public roots, the configured CA file and `extra`.
fn http_client(extra: Option<reqwest::Certificate>) -> Result<reqwest::Client, String> {
    with_roots(base_builder(), extra)
}

fn base_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(60))
}

/// `builder` trusting the public roots, the configured CA file and `extra`.
fn with_roots(
    mut builder: reqwest::ClientBuilder,
    extra: Option<reqwest::Certificate>,
) -> Result<reqwest::Client, String> {
    // Registries with certificates of a private CA: its PEM file, trusted besides the
    // public roots.
    if let Ok(path) = std::env::var(CA_FILE_ENV) {
        let pem = std::fs::read(&path).map_err(|e| format!("{CA_FILE_ENV}={path}: {e}"))?;
        let cert = reqwest::Certificate::from_pem(&pem)
            .map_err(|e| format!("{CA_FILE_ENV}={path}: {e}"))?;
        builder = builder.add_root_certificate(cert);
    }
    if let Some(cert) = extra {
        builder = builder.add_root_certificate(cert);
    }
    builder.build().map_err(|e| e.to_string())
}

/// Environment variable listing the registry hosts the service may connect to, comma
/// separated: `host` (any port), `host:port`, or `*.example.com` (any host under it).
pub const ALLOW_ENV: &str = "LAYERLINE_REGISTRY_ALLOW";

/// Where the service may connect for sources, backends and notifying registries. Without a
/// list, any host whose addresses are public; with one, only the hosts it names, which may
/// then also be loopback or private (the operator said so). A link-local address (the cloud
/// metadata service at 169.254.169.254) is reached only when its host is listed, too.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Egress {
    allow: Option<Vec<String>>,
}

impl Egress {
    /// The policy `list` (as [`ALLOW_ENV`] spells it) describes; `None`: no list.
    pub fn new(list: Option<&str>) -> Egress {
        let allow = list.map(|l| {
            l.split(',')
                .map(|h| h.trim().to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .collect()
        });
        Egress { allow }
    }

    /// This process's policy, read once from [`ALLOW_ENV`].
    pub fn from_env() -> Egress {
        static EGRESS: std::sync::OnceLock<Egress> = std::sync::OnceLock::new();
        EGRESS
            .get_or_init(|| {
                let list = std::env::var(ALLOW_ENV).ok();
                Egress::new(list.as_deref().filter(|l| !l.trim().is_empty()))
            })
            .clone()
    }

    /// Whether the list names `host` (with `port`, or any port).
    fn listed(&self, host: &str, port: Option<u16>) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        self.allow.iter().flatten().any(|entry| {
            let entry = entry.as_str();
            let (name, entry_port) = match entry.rsplit_once(':') {
                Some((n, p)) if !n.contains(':') || n.ends_with(']') => (n, p.parse().ok()),
                _ => (entry, None),
            };
            let name = name.trim_start_matches('[').trim_end_matches(']');
            let name_ok = match name.strip_prefix("*.") {
                Some(suffix) => host.ends_with(&format!(".{suffix}")),
                None => name == host,
            };
            name_ok && (entry_port.is_none() || entry_port == port)
        })
    }

    /// Refuses `url` when its host is not one the service may reach by name: outside the
    /// list (when there is one), or an address that is not public and not listed.
    pub fn check_url(&self, url: &str) -> Result<(), OciError> {
        let parsed = reqwest::Url::parse(url).map_err(|_| OciError::Refused {
            host: crate::domain::validate::clip(url).into_owned(),
            reason: "not a URL".to_owned(),
        })?;
        let host = parsed.host_str().unwrap_or_default().to_ascii_lowercase();
        let refused = |reason: &str| OciError::Refused {
            host: host_of(url).unwrap_or_else(|| host.clone()),
            reason: reason.to_owned(),
        };
        let port = parsed.port_or_known_default();
        if self.listed(&host, port) {
            return Ok(());
        }
        if self.allow.is_some() {
            return Err(refused(&format!("{ALLOW_ENV} does not list it")));
        }
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        match bare.parse::<std::net::IpAddr>() {
            Ok(ip) if !is_public(ip) => Err(refused(&format!(
                "a loopback, private or link-local address (list it in {ALLOW_ENV} to allow it)"
            ))),
            // A name is checked once resolved (GuardedResolver).
            _ => Ok(()),
        }
    }

    /// Whether `host` may be reached at address `ip` (once resolved).
    fn address_ok(&self, host: &str, ip: std::net::IpAddr) -> bool {
        self.listed(host, None) || (self.allow.is_none() && is_public(ip))
    }
}

/// Whether `ip` is an address of the public internet: not loopback, private, link-local,
/// shared (100.64/10), unspecified, broadcast, documentation or multicast.
fn is_public(ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    match ip {
        IpAddr::V4(a) => {
            let [b0, b1, ..] = a.octets();
            !(a.is_loopback()
                || a.is_private()
                || a.is_link_local()
                || a.is_unspecified()
                || a.is_broadcast()
                || a.is_multicast()
                || a.is_documentation()
                || b0 == 0
                || (b0 == 100 && (64..128).contains(&b1)))
        }
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => is_public(IpAddr::V4(v4)),
            None => {
                let first = a.segments()[0];
                !(a.is_loopback()
                    || a.is_unspecified()
                    || a.is_multicast()
                    || (first & 0xfe00) == 0xfc00
                    || (first & 0xffc0) == 0xfe80)
            }
        },
    }
}

/// What the guard's resolver says of a host left with no address it may reach.
const NO_ALLOWED_ADDRESS: &str = "resolves to no address registries are reached at";

/// Resolves names as the system does, keeping only the addresses [`Egress`] allows; a host
/// left with none is refused, naming the host only.
struct GuardedResolver {
    egress: Egress,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_ascii_lowercase();
        let egress = self.egress.clone();
        Box::pin(async move {
            let found: Vec<std::net::SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let kept: Vec<std::net::SocketAddr> = found
                .into_iter()
                .filter(|a| egress.address_ok(&host, a.ip()))
                .collect();
            if kept.is_empty() {
                return Err(format!("{host} {NO_ALLOWED_ADDRESS}").into());
            }
            Ok(Box::new(kept.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// `host[:port]` of `url`, lowercase, with the port only when the URL names one.
pub fn host_of(url: &str) -> Option<String> {
    let parsed = reqwest::Url::parse(url).ok()?;
    let host = parsed.host_str()?.to_ascii_lowercase();
    Some(match parsed.port() {
        Some(port) => format!("{host}:{port}"),
        None => host,
    })
}

/// Whether `a` and `b` are URLs of the same scheme, host and port.
fn same_host(a: &str, b: &str) -> bool {
    let origin = |u: &str| {
        reqwest::Url::parse(u).ok().map(|u| {
            (
                u.scheme().to_owned(),
                u.host_str().map(str::to_ascii_lowercase),
                u.port_or_known_default(),
            )
        })
    };
    matches!((origin(a), origin(b)), (Some(x), Some(y)) if x == y)
}

/// An error with its causes (`reqwest` keeps the useful part, such as a refused
/// certificate, in the sources).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn too_large(named: &str) -> OciError {
    OciError::BadManifest {
        reference: named.to_owned(),
        reason: format!("larger than {MAX_MANIFEST_BYTES} bytes"),
    }
}

async fn json<T: serde::de::DeserializeOwned>(
    res: reqwest::Response,
    path: &str,
) -> Result<T, OciError> {
    res.json()
        .await
        .map_err(|e| OciError::Transport(format!("{path}: not the expected JSON: {e}")))
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// The `rel="next"` target of a `Link` header (`</v2/…?last=x&n=100>; rel="next"`).
fn next_link(res: &reqwest::Response) -> Option<String> {
    let link = res.headers().get("link")?.to_str().ok()?;
    link.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        params.contains("rel=\"next\"").then(|| {
            target
                .trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_owned()
        })
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Challenge {
    realm: String,
    service: Option<String>,
    scope: Option<String>,
}

/// Reads `Bearer realm="…",service="…",scope="…"`.
fn bearer_challenge(header: &str) -> Option<Challenge> {
    let rest = header.trim().strip_prefix("Bearer ")?;
    let mut realm = None;
    let (mut service, mut scope) = (None, None);
    // Values are quoted and may contain commas (scopes do): split on `",`.
    for part in rest.split("\",") {
        let (key, value) = part.split_once('=')?;
        let value = value.trim().trim_matches('"').to_owned();
        match key.trim() {
            "realm" => realm = Some(value),
            "service" => service = Some(value),
            "scope" => scope = Some(value),
            _ => {}
        }
    }
    Some(Challenge {
        realm: realm?,
        service,
        scope,
    })
}

/// Reads a fetched manifest: an image manifest (OCI or Docker v2) or an index (OCI index or
/// Docker manifest list). Anything else is refused, naming the reference.
pub fn parse(reference: &str, fetched: &Fetched) -> Result<Parsed, OciError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Descriptor {
        media_type: Option<String>,
        digest: String,
        size: i64,
        platform: Option<Platform>,
    }
    #[derive(Deserialize)]
    struct Platform {
        os: String,
        architecture: String,
        variant: Option<String>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Body {
        schema_version: Option<i64>,
        config: Option<Descriptor>,
        #[serde(default)]
        layers: Vec<Descriptor>,
        #[serde(default)]
        manifests: Vec<Descriptor>,
    }
    let bad = |reason: String| OciError::BadManifest {
        reference: reference.to_owned(),
        reason,
    };
    let body: Body =
        serde_json::from_slice(&fetched.body).map_err(|e| bad(format!("not a manifest: {e}")))?;
    // A subject must be a descriptor: what it names is what this manifest is attached to.
    if let Some(subject) = attached(&fetched.body)?.subject {
        let descriptor = serde_json::from_value::<Descriptor>(subject)
            .map_err(|e| bad(format!("its subject is not a descriptor: {e}")))?;
        check_digest(&descriptor.digest).map_err(|e| bad(format!("its subject: {e}")))?;
    }
    if body.schema_version != Some(2) {
        return Err(bad(format!(
            "schema version {:?}; only version 2 is supported",
            body.schema_version
        )));
    }
    let blob = |d: Descriptor, default: &str| -> Result<Blob, OciError> {
        check_digest(&d.digest).map_err(&bad)?;
        if d.size < 0 {
            return Err(bad(format!("{} has a negative size", d.digest)));
        }
        Ok(Blob {
            digest: d.digest,
            size: d.size,
            media_type: d.media_type.unwrap_or_else(|| default.to_owned()),
        })
    };
    match fetched.media_type.as_str() {
        OCI_MANIFEST | DOCKER_MANIFEST => Ok(Parsed::Image {
            config: body
                .config
                .map(|c| blob(c, "application/octet-stream"))
                .transpose()?,
            layers: body
                .layers
                .into_iter()
                .map(|l| blob(l, "application/octet-stream"))
                .collect::<Result<_, _>>()?,
        }),
        OCI_INDEX | DOCKER_LIST => Ok(Parsed::Index {
            children: body
                .manifests
                .into_iter()
                .map(|m| {
                    check_digest(&m.digest).map_err(&bad)?;
                    let platform = m.platform.map(|p| match p.variant {
                        Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
                        None => format!("{}/{}", p.os, p.architecture),
                    });
                    Ok((m.digest, platform))
                })
                .collect::<Result<_, OciError>>()?,
        }),
        other => Err(bad(format!("unknown media type `{other}`"))),
    }
}

fn check_digest(d: &str) -> Result<(), String> {
    let hex = d
        .strip_prefix("sha256:")
        .ok_or_else(|| format!("{d}: only sha256 digests are supported"))?;
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        return Err(format!("{d}: not a sha256 digest"));
    }
    Ok(())
}

/// What a manifest says about what it is attached to and when its image was made.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Attached {
    subject: Option<serde_json::Value>,
    artifact_type: Option<String>,
    #[serde(default)]
    annotations: std::collections::BTreeMap<String, serde_json::Value>,
}

fn attached(body: &[u8]) -> Result<Attached, OciError> {
    Ok(serde_json::from_slice(body).unwrap_or_default())
}

/// The annotation naming when an image was made.
pub const CREATED_ANNOTATION: &str = "org.opencontainers.image.created";

/// `text` as a creation time, normalized (`format_time`), when it is an RFC 3339 time no
/// earlier than 1990 and no later than a day after `now`; `None` for anything else.
pub fn creation_time(text: &str, now: chrono::DateTime<chrono::Utc>) -> Option<String> {
    let t = chrono::DateTime::parse_from_rfc3339(text.trim())
        .ok()?
        .with_timezone(&chrono::Utc);
    let earliest = chrono::DateTime::from_timestamp(631_152_000, 0)?; // 1990-01-01
    (t >= earliest && t <= now + chrono::Duration::days(1)).then(|| crate::domain::format_time(t))
}

/// What an image's config says of its creation: the time, checked as [`creation_time`]
/// does, and whether it stated one at all (a stated time that is refused is reported).
pub fn config_created(config: &[u8], now: chrono::DateTime<chrono::Utc>) -> (Option<String>, bool) {
    #[derive(Deserialize)]
    struct Config {
        created: Option<String>,
    }
    let stated = serde_json::from_slice::<Config>(config)
        .ok()
        .and_then(|c| c.created);
    let created = stated.as_deref().and_then(|t| creation_time(t, now));
    (created, stated.is_some())
}

/// The event recording `fetched` (parsed as `parsed`), reached through an index with
/// `platform` when it is a child. Its `created` is the manifest's annotation, when it has a
/// sane one (the importer may fill it from the config); `subject` and `artifact_type` are the
/// manifest's own (checked by [`parse`]).
pub fn recorded(fetched: &Fetched, parsed: Parsed, platform: Option<String>) -> ManifestRecorded {
    let facts = attached(&fetched.body).unwrap_or_default();
    let subject = facts
        .subject
        .as_ref()
        .and_then(|s| s.get("digest"))
        .and_then(|d| d.as_str())
        .map(str::to_owned);
    let created = facts
        .annotations
        .get(CREATED_ANNOTATION)
        .and_then(|v| v.as_str())
        .and_then(|t| creation_time(t, chrono::Utc::now()));
    let (config, layers, children) = match parsed {
        Parsed::Image { config, layers } => (config, layers, Vec::new()),
        Parsed::Index { children } => (
            None,
            Vec::new(),
            children.into_iter().map(|(d, _)| d).collect(),
        ),
    };
    ManifestRecorded {
        digest: fetched.digest.clone(),
        media_type: fetched.media_type.clone(),
        platform,
        config,
        layers,
        children,
        created,
        subject,
        artifact_type: facts.artifact_type,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn egress_lists_hosts_and_refuses_addresses_that_are_not_public() {
        use std::net::IpAddr;
        let open = Egress::new(None);
        for url in [
            "https://registry.example.com",
            "https://8.8.8.8:5000",
            "https://[2001:4860::1]",
        ] {
            assert!(open.check_url(url).is_ok(), "{url}");
        }
        for url in [
            "http://127.0.0.1:5000",
            "https://169.254.169.254",
            "https://10.1.2.3",
            "https://172.16.0.1",
            "https://192.168.1.1",
            "https://100.64.0.1",
            "https://0.0.0.0",
            "https://[::1]",
            "https://[fe80::1]",
            "https://[fd00::1]",
            "https://[::ffff:127.0.0.1]",
        ] {
            let err = open.check_url(url).unwrap_err();
            assert!(matches!(err, OciError::Refused { .. }), "{url}: {err}");
            assert!(!err.is_transient());
        }
        let listed = Egress::new(Some("127.0.0.1, registry.example.com:5000,*.corp.example"));
        assert!(listed.check_url("http://127.0.0.1:9999").is_ok());
        assert!(
            listed
                .check_url("https://registry.example.com:5000")
                .is_ok()
        );
        assert!(
            listed.check_url("https://registry.example.com").is_err(),
            "another port"
        );
        assert!(listed.check_url("https://a.corp.example").is_ok());
        assert!(listed.check_url("https://corp.example").is_err());
        assert!(listed.check_url("https://other.example").is_err());
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(listed.address_ok("a.corp.example", ip("10.0.0.1")));
        assert!(!open.address_ok("registry.example.com", ip("169.254.169.254")));
        assert!(open.address_ok("registry.example.com", ip("93.184.216.34")));
    }

    #[test]
    fn subjects_must_be_descriptors_and_ages_must_be_sane() {
        let d = format!("sha256:{}", "a".repeat(64));
        let manifest = |extra: &str| {
            let body =
                format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","layers":[]{extra}}}"#);
            Fetched {
                digest: sha256(body.as_bytes()),
                media_type: OCI_MANIFEST.into(),
                body: body.into_bytes(),
            }
        };
        for bad in [
            r#","subject":"sha256:x""#,
            r#","subject":{"digest":"md5:1","size":1}"#,
        ] {
            let err = parse("team/app:sig", &manifest(bad)).unwrap_err();
            assert!(err.to_string().contains("team/app:sig"), "{err}");
            assert!(err.to_string().contains("subject"), "{err}");
        }
        let signed = manifest(&format!(
            r#","subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{d}","size":9}},"artifactType":"application/vnd.example.sbom","annotations":{{"org.opencontainers.image.created":"2024-02-05T10:00:00+01:00"}}"#
        ));
        let parsed = parse("team/app:sbom", &signed).unwrap();
        let m = recorded(&signed, parsed, None);
        assert_eq!(m.subject.as_deref(), Some(d.as_str()));
        assert_eq!(
            m.artifact_type.as_deref(),
            Some("application/vnd.example.sbom")
        );
        assert_eq!(m.created.as_deref(), Some("2024-02-05T09:00:00.000000Z"));
        let now = chrono::Utc::now();
        assert_eq!(creation_time("1989-12-31T23:59:59Z", now), None);
        assert_eq!(creation_time("2199-01-01T00:00:00Z", now), None);
        assert_eq!(creation_time("yesterday", now), None);
        let (created, stated) = config_created(br#"{"created":"2024-01-05T10:00:00Z"}"#, now);
        assert!(created.is_some() && stated);
        assert_eq!(
            config_created(br#"{"architecture":"amd64"}"#, now),
            (None, false)
        );
        assert_eq!(
            config_created(br#"{"created":"1970-01-01T00:00:00Z"}"#, now),
            (None, true)
        );
    }

    #[test]
    fn bearer_challenges_keep_commas_inside_quoted_scopes() {
        let c = bearer_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:team/app:pull,push""#,
        )
        .unwrap();
        assert_eq!(c.realm, "https://auth.example/token");
        assert_eq!(c.service.as_deref(), Some("registry.example"));
        assert_eq!(c.scope.as_deref(), Some("repository:team/app:pull,push"));
        assert_eq!(bearer_challenge(r#"Basic realm="x""#), None);
    }

    #[test]
    fn unknown_media_types_and_bad_digests_are_refused_by_reference() {
        let fetched = |media_type: &str, body: &str| Fetched {
            digest: sha256(body.as_bytes()),
            media_type: media_type.into(),
            body: body.as_bytes().to_vec(),
        };
        let err = parse(
            "team/app:v1",
            &fetched("application/vnd.example+json", r#"{"schemaVersion":2}"#),
        )
        .unwrap_err();
        assert!(err.to_string().contains("team/app:v1"), "{err}");
        assert!(err.to_string().contains("unknown media type"), "{err}");
        let err = parse(
            "team/app:v1",
            &fetched(
                OCI_MANIFEST,
                r#"{"schemaVersion":2,"layers":[{"digest":"md5:00","size":1}]}"#,
            ),
        )
        .unwrap_err();
        assert!(err.to_string().contains("only sha256"), "{err}");
    }
}

//! Image archives: an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/…`) or a
//! `docker save` tar (`manifest.json`, a config and a layer tar per image), read from a file.
//!
//! The archive is read once to hash every file, so every blob is checked against its name (or
//! given its digest, for `docker save` layers) before anything is recorded; manifests and
//! configs are then read back by their position. A `docker save` image without an OCI layout
//! gets an OCI manifest written for it (uncompressed layers, as saved); an archive that holds
//! both (Docker 25 and later) is read as its OCI layout.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::importer::Verified;
use crate::oci::{Fetched, MAX_MANIFEST_BYTES, OCI_MANIFEST, Parsed, parse, recorded};

/// Most files one archive may hold.
pub const MAX_ENTRIES: usize = 100_000;

/// Why an archive was refused; the message names the file or the reference.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("not a readable tar archive: {0}")]
    Tar(String),
    #[error("{0}")]
    Invalid(String),
}

fn invalid(message: impl Into<String>) -> ArchiveError {
    ArchiveError::Invalid(message.into())
}

/// A file of the archive: where its bytes start, how many there are and their digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub offset: u64,
    pub size: u64,
    pub digest: String,
}

/// An archive read and checked: what to record, and where each blob's bytes are.
#[derive(Debug)]
pub struct Loaded {
    pub path: PathBuf,
    /// Each image with the tag to point at it, if the archive names one.
    pub images: Vec<(Verified, Option<String>)>,
    /// Blobs (configs and layers) by digest.
    pub blobs: HashMap<String, Entry>,
}

/// Reads the archive at `path` (blocking: run it off the async threads).
pub fn load(path: &Path) -> Result<Loaded, ArchiveError> {
    let files = scan(path)?;
    let mut file = std::fs::File::open(path).map_err(|e| ArchiveError::Tar(e.to_string()))?;
    let mut read = |name: &str| -> Result<Vec<u8>, ArchiveError> {
        let e = files
            .get(name)
            .ok_or_else(|| invalid(format!("{name} is not in the archive")))?;
        read_at(&mut file, e, name)
    };
    let (images, blobs) = if files.contains_key("index.json") {
        oci_layout(&files, &mut read)?
    } else if files.contains_key("manifest.json") {
        docker_save(&files, &mut read)?
    } else {
        return Err(invalid(
            "neither an OCI image layout (index.json) nor a docker save archive (manifest.json)",
        ));
    };
    if images.is_empty() {
        return Err(invalid("the archive holds no image"));
    }
    Ok(Loaded {
        path: path.to_owned(),
        images,
        blobs,
    })
}

/// Every regular file of the archive by its normalised path, hashed.
fn scan(path: &Path) -> Result<HashMap<String, Entry>, ArchiveError> {
    let file = std::fs::File::open(path).map_err(|e| ArchiveError::Tar(e.to_string()))?;
    let mut archive = tar::Archive::new(std::io::BufReader::new(file));
    let mut files = HashMap::new();
    let entries = archive
        .entries()
        .map_err(|e| ArchiveError::Tar(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| ArchiveError::Tar(e.to_string()))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry
            .path()
            .map_err(|e| ArchiveError::Tar(e.to_string()))?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_owned();
        let (offset, size) = (entry.raw_file_position(), entry.size());
        let mut hasher = Sha256::new();
        let mut buf = vec![0; 64 * 1024];
        loop {
            let n = entry
                .read(&mut buf)
                .map_err(|e| ArchiveError::Tar(format!("{name}: {e}")))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        let hex: String = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let digest = format!("sha256:{hex}");
        // A blob of an OCI layout is named after its digest: check it here, once.
        if let Some(named) = name.strip_prefix("blobs/sha256/")
            && named != hex
        {
            return Err(invalid(format!(
                "{name}: its content has digest {digest}, not the one it is named after"
            )));
        }
        files.insert(
            name,
            Entry {
                offset,
                size,
                digest,
            },
        );
        if files.len() > MAX_ENTRIES {
            return Err(invalid(format!("more than {MAX_ENTRIES} files")));
        }
    }
    Ok(files)
}

/// The bytes of a small file (a manifest, a config, an index) of the archive.
fn read_at(file: &mut std::fs::File, e: &Entry, name: &str) -> Result<Vec<u8>, ArchiveError> {
    if e.size as usize > MAX_MANIFEST_BYTES {
        return Err(invalid(format!(
            "{name}: larger than {MAX_MANIFEST_BYTES} bytes"
        )));
    }
    file.seek(SeekFrom::Start(e.offset))
        .map_err(|err| ArchiveError::Tar(err.to_string()))?;
    let mut bytes = vec![0; e.size as usize];
    file.read_exact(&mut bytes)
        .map_err(|err| ArchiveError::Tar(format!("{name}: {err}")))?;
    Ok(bytes)
}

fn blob_path(digest: &str) -> Result<String, ArchiveError> {
    match digest.strip_prefix("sha256:") {
        Some(hex) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Ok(format!("blobs/sha256/{hex}"))
        }
        _ => Err(invalid(format!("unsupported digest {digest}"))),
    }
}

type ReadFile<'a> = dyn FnMut(&str) -> Result<Vec<u8>, ArchiveError> + 'a;
type Images = (Vec<(Verified, Option<String>)>, HashMap<String, Entry>);

/// Checks that every blob `parsed` lists is in the archive with the size it says; collects
/// them into `blobs`.
fn check_blobs(
    named: &str,
    parsed: &Parsed,
    files: &HashMap<String, Entry>,
    blobs: &mut HashMap<String, Entry>,
) -> Result<(), ArchiveError> {
    let Parsed::Image { config, layers } = parsed else {
        return Ok(());
    };
    for b in config.iter().chain(layers) {
        let path = blob_path(&b.digest)?;
        let e = files
            .get(&path)
            .ok_or_else(|| invalid(format!("{named}: blob {} is not in the archive", b.digest)))?;
        if e.size as i64 != b.size {
            return Err(invalid(format!(
                "{named}: blob {} has {} bytes, the manifest says {}",
                b.digest, e.size, b.size
            )));
        }
        blobs.insert(b.digest.clone(), e.clone());
    }
    Ok(())
}

/// A manifest of the layout by its descriptor, digest checked (by the scan) and parsed.
fn layout_manifest(
    digest: &str,
    media_type: &str,
    named: &str,
    read: &mut ReadFile<'_>,
) -> Result<(Fetched, Parsed), ArchiveError> {
    let body = read(&blob_path(digest)?)?;
    let fetched = Fetched {
        digest: digest.to_owned(),
        media_type: media_type.to_owned(),
        body,
    };
    let parsed = parse(named, &fetched).map_err(|e| invalid(e.to_string()))?;
    Ok((fetched, parsed))
}

fn oci_layout(
    files: &HashMap<String, Entry>,
    read: &mut ReadFile<'_>,
) -> Result<Images, ArchiveError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Descriptor {
        media_type: String,
        digest: String,
        #[serde(default)]
        annotations: HashMap<String, String>,
    }
    #[derive(Deserialize)]
    struct Index {
        manifests: Vec<Descriptor>,
    }
    let index: Index = serde_json::from_slice(&read("index.json")?)
        .map_err(|e| invalid(format!("index.json: {e}")))?;
    let (mut images, mut blobs) = (Vec::new(), HashMap::new());
    for d in index.manifests {
        let tag = d
            .annotations
            .get("org.opencontainers.image.ref.name")
            .filter(|t| crate::domain::validate::tag_name(t).is_ok())
            .cloned();
        let named = format!("archive@{}", d.digest);
        let (top, parsed) = layout_manifest(&d.digest, &d.media_type, &named, read)?;
        let (mut manifests, mut fetched) = (Vec::new(), Vec::new());
        if let Parsed::Index { children } = &parsed {
            for (digest, platform) in children {
                let child_named = format!("archive@{digest}");
                let media_type = child_media_type(&top, digest);
                let (child, child_parsed) =
                    layout_manifest(digest, &media_type, &child_named, read)?;
                if matches!(child_parsed, Parsed::Index { .. }) {
                    return Err(invalid(format!(
                        "{child_named}: an index inside an index is not supported"
                    )));
                }
                check_blobs(&child_named, &child_parsed, files, &mut blobs)?;
                manifests.push(recorded(&child, child_parsed, platform.clone()));
                fetched.push(child);
            }
        }
        check_blobs(&named, &parsed, files, &mut blobs)?;
        let digest = top.digest.clone();
        manifests.push(recorded(&top, parsed, None));
        fetched.push(top);
        let verified = Verified {
            named: tag.as_ref().map_or(named, |t| format!("archive:{t}")),
            manifests,
            fetched,
            digest,
            ages_ignored: Vec::new(),
        };
        images.push((verified, tag));
    }
    Ok((images, blobs))
}

/// The media type an index gives child `digest` (OCI manifest when it gives none).
fn child_media_type(index: &Fetched, digest: &str) -> String {
    serde_json::from_slice::<Value>(&index.body)
        .ok()
        .and_then(|v| {
            v["manifests"].as_array()?.iter().find_map(|m| {
                (m["digest"] == digest).then(|| m["mediaType"].as_str().map(str::to_owned))?
            })
        })
        .unwrap_or_else(|| OCI_MANIFEST.to_owned())
}

fn docker_save(
    files: &HashMap<String, Entry>,
    read: &mut ReadFile<'_>,
) -> Result<Images, ArchiveError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Saved {
        config: String,
        #[serde(default)]
        repo_tags: Option<Vec<String>>,
        layers: Vec<String>,
    }
    let saved: Vec<Saved> = serde_json::from_slice(&read("manifest.json")?)
        .map_err(|e| invalid(format!("manifest.json: {e}")))?;
    let (mut images, mut blobs) = (Vec::new(), HashMap::new());
    for s in saved {
        let config = files
            .get(&s.config)
            .ok_or_else(|| invalid(format!("{} is not in the archive", s.config)))?;
        let mut layers = Vec::new();
        for l in &s.layers {
            let e = files
                .get(l)
                .ok_or_else(|| invalid(format!("{l} is not in the archive")))?;
            layers.push(
                json!({"mediaType": "application/vnd.oci.image.layer.v1.tar",
                               "digest": e.digest, "size": e.size}),
            );
            blobs.insert(e.digest.clone(), e.clone());
        }
        blobs.insert(config.digest.clone(), config.clone());
        let body = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config.digest, "size": config.size},
            "layers": layers,
        })
        .to_string()
        .into_bytes();
        let fetched = Fetched {
            digest: crate::oci::sha256(&body),
            media_type: OCI_MANIFEST.to_owned(),
            body,
        };
        let named = format!("archive@{}", fetched.digest);
        let parsed = parse(&named, &fetched).map_err(|e| invalid(e.to_string()))?;
        let manifest = recorded(&fetched, parsed, None);
        // `repo:tag` (the repository may hold a registry's `host:port`).
        let tags: Vec<String> = s
            .repo_tags
            .unwrap_or_default()
            .iter()
            .filter_map(|rt| {
                let (repo, tag) = rt.rsplit_once(':')?;
                (!tag.contains('/') && !repo.is_empty()).then(|| tag.to_owned())
            })
            .filter(|t| crate::domain::validate::tag_name(t).is_ok())
            .collect();
        let verified = |named: String| Verified {
            named,
            manifests: vec![manifest.clone()],
            fetched: vec![fetched.clone()],
            digest: fetched.digest.clone(),
            ages_ignored: Vec::new(),
        };
        if tags.is_empty() {
            images.push((verified(named.clone()), None));
        }
        for t in tags {
            images.push((verified(format!("archive:{t}")), Some(t)));
        }
    }
    Ok((images, blobs))
}

/// Copies the archive's images to `target_repo` of `backend`: each blob it lacks, streamed
/// from the archive file (the backend checks it against its digest), then every manifest by
/// digest (children first) and each tag.
pub async fn push(
    loaded: &Loaded,
    backend: &crate::oci::Client,
    target_repo: &str,
) -> Result<crate::importer::Copied, crate::oci::OciError> {
    use crate::oci::OciError;
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut copied = crate::importer::Copied::default();
    let io = |e: std::io::Error| OciError::Transport(format!("reading the archive: {e}"));
    for (digest, e) in &loaded.blobs {
        if backend.has_blob(target_repo, digest).await? {
            copied.blobs_present += 1;
            continue;
        }
        let mut tried = 0;
        loop {
            tried += 1;
            let mut file = tokio::fs::File::open(&loaded.path).await.map_err(io)?;
            file.seek(SeekFrom::Start(e.offset)).await.map_err(io)?;
            let stream = tokio_util::io::ReaderStream::new(file.take(e.size));
            let body = reqwest::Body::wrap_stream(stream);
            match backend
                .push_blob(target_repo, digest, Some(e.size), body)
                .await
            {
                Ok(()) => break,
                Err(err) if err.is_transient() && tried < 3 => {
                    tracing::warn!(%err, digest, "uploading a blob failed; trying again");
                }
                Err(err) => return Err(err),
            }
        }
        copied.blobs_uploaded += 1;
        copied.bytes_uploaded += e.size;
    }
    let mut pushed = std::collections::HashSet::new();
    for (v, tag) in &loaded.images {
        copied.manifests_pushed +=
            crate::importer::push_manifests(backend, target_repo, v, tag.as_deref(), &mut pushed)
                .await?;
    }
    Ok(copied)
}

//! The image aggregate: one repository of a namespace, with its manifests and tags.
//!
//! Size rules (design §4) are kept here as blob reference counts: `size` is the sum of the
//! sizes of the distinct blobs (configs and layers) of all manifests stored under the image.
//! An index has no blobs of its own; its children are manifests of the same image, so their
//! blobs count through them.

use std::collections::BTreeMap;

use super::event::{
    Blob, DeletionRequested, DomainEvent, ImageCreated, ImageUpdated, ManifestDeleted,
    ManifestRecorded, TagDeleted, TagPushed,
};
use super::{Aggregate, DomainError, streams, validate};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag {
    pub id: String,
    pub digest: String,
    pub created_at: String,
    pub updated_at: String,
    /// Stream version of the event that last pointed this tag (pushed or moved it).
    pub pushed_version: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub recorded: ManifestRecorded,
    pub created_at: String,
    /// Log position of the event that recorded it.
    pub seq: i64,
}

/// A blob of the image with the number of the image's manifests that reference it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobRef {
    pub size: i64,
    pub refs: i64,
}

/// The state of one image stream, folded from its events.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Image {
    /// `None` until `image.created`; `visibility` is kept current.
    pub created: Option<ImageCreated>,
    pub deleted: bool,
    /// The delete job that will remove the image, once one was accepted.
    pub deleting: Option<String>,
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
    pub tags: BTreeMap<String, Tag>,
    pub manifests: BTreeMap<String, Manifest>,
    pub blobs: BTreeMap<String, BlobRef>,
    /// Sum of the sizes of `blobs` (each distinct blob once).
    pub size: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageCommand {
    Create {
        namespace_id: String,
        name: String,
        visibility: Option<String>,
    },
    SetVisibility(String),
    RecordManifest(ManifestRecorded),
    /// Points `name` at `digest`; `new_tag_id` is used only when the tag does not exist yet.
    PushTag {
        name: String,
        digest: String,
        new_tag_id: String,
    },
    /// Deletes a tag by name. When other tags share its digest this is refused unless `force`,
    /// which deletes them and the manifest too.
    DeleteTag {
        name: String,
        force: bool,
    },
    /// Deletes each named tag still present, with its manifest and every tag sharing it
    /// (as `DeleteTag` with `force`), in one append. Names already gone are skipped.
    DeleteTags {
        names: Vec<String>,
    },
    DeleteManifest {
        digest: String,
    },
    /// Records what an import verified, in one append: each manifest not recorded yet (an
    /// index's children before it), then each tag `(name, digest, new_tag_id)` pointed at its
    /// digest (nothing for a tag already there), pushed at `pushed_at` when the source said
    /// when (a notification's timestamp), else at its manifest's creation time.
    Import {
        manifests: Vec<ManifestRecorded>,
        tags: Vec<(String, String, String)>,
        pushed_at: Option<String>,
    },
    /// Applies a prune plan made at an earlier state: deletes each planned tag only while it
    /// still points where it did (`pushed_version` unchanged), then each planned manifest
    /// only while no tag points at it and no remaining manifest lists it. Whatever changed
    /// since the plan is left alone; what is already gone is skipped.
    Prune {
        /// `(name, pushed_version)` as planned.
        tags: Vec<(String, i64)>,
        /// Digests, in any order (a child waits for its planned index).
        manifests: Vec<String>,
    },
    /// Marks the image `deleting` for delete job `job_id`; nothing when already marked.
    RequestDelete {
        job_id: String,
    },
    Delete,
}

/// The distinct blobs (config and layers) a manifest references, ordered by digest.
pub fn distinct_blobs(m: &ManifestRecorded) -> Vec<&Blob> {
    let mut blobs: Vec<&Blob> = m.config.iter().chain(m.layers.iter()).collect();
    blobs.sort_by(|a, b| a.digest.cmp(&b.digest));
    blobs.dedup_by(|a, b| a.digest == b.digest);
    blobs
}

impl Image {
    fn live(&self, id: &str) -> Result<&ImageCreated, DomainError> {
        match &self.created {
            Some(c) if !self.deleted => Ok(c),
            _ => Err(DomainError::not_found("image", id)),
        }
    }

    /// The event pointing tag `name` at recorded manifest `digest` (a new tag gets
    /// `new_tag_id`, a moved one keeps its id), pushed at `pushed_at` (`None`: when it is
    /// recorded); none when it points there already.
    fn tag_push(
        &self,
        name: String,
        digest: String,
        new_tag_id: String,
        pushed_at: Option<String>,
    ) -> Result<Option<DomainEvent>, DomainError> {
        validate::tag_name(&name)?;
        if !self.manifests.contains_key(&digest) {
            return Err(DomainError::not_found("manifest", digest));
        }
        let tag_id = match self.tags.get(&name) {
            Some(t) if t.digest == digest => return Ok(None),
            Some(t) => t.id.clone(),
            None => new_tag_id,
        };
        Ok(Some(DomainEvent::TagPushed(TagPushed {
            tag_id,
            name,
            digest,
            pushed_at,
        })))
    }

    /// Whether any manifest of the image lists `digest` as a child.
    pub fn is_child(&self, digest: &str) -> bool {
        self.manifests
            .values()
            .any(|m| m.recorded.children.iter().any(|c| c == digest))
    }

    /// The manifests attached to `digest` (design §11): those naming it as their `subject`,
    /// and those a tag of cosign's scheme or of the referrers tag schema names it on.
    pub fn attachments(&self, digest: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .manifests
            .values()
            .filter(|m| m.recorded.subject.as_deref() == Some(digest))
            .map(|m| m.recorded.digest.clone())
            .collect();
        if let Some(hex) = digest.strip_prefix("sha256:") {
            for suffix in ["", ".sig", ".att", ".sbom"] {
                if let Some(t) = self.tags.get(&format!("sha256-{hex}{suffix}"))
                    && t.digest != digest
                    && !out.contains(&t.digest)
                {
                    out.push(t.digest.clone());
                }
            }
        }
        out
    }

    /// Whether any tag points at `digest`.
    pub fn is_tagged(&self, digest: &str) -> bool {
        self.tags.values().any(|t| t.digest == digest)
    }

    fn check_manifest(&self, m: &ManifestRecorded) -> Result<(), DomainError> {
        validate::digest("digest", &m.digest)?;
        if m.media_type.is_empty() || m.media_type.len() > 255 {
            return Err(DomainError::invalid("media_type", "1 to 255 characters"));
        }
        if m.platform.as_ref().is_some_and(|p| p.len() > 64) {
            return Err(DomainError::invalid("platform", "at most 64 characters"));
        }
        let mut seen: BTreeMap<&str, i64> = BTreeMap::new();
        for blob in m.config.iter().chain(m.layers.iter()) {
            validate::digest("blob", &blob.digest)?;
            if blob.size < 0 {
                return Err(DomainError::invalid("blob", "size must not be negative"));
            }
            let known = seen
                .insert(&blob.digest, blob.size)
                .or_else(|| self.blobs.get(&blob.digest).map(|b| b.size));
            if known.is_some_and(|size| size != blob.size) {
                return Err(DomainError::invalid(
                    "blob",
                    format!("{} is listed with two different sizes", blob.digest),
                ));
            }
        }
        for child in &m.children {
            if !self.manifests.contains_key(child) {
                return Err(DomainError::invalid(
                    "children",
                    format!("child manifest {child} must be recorded before its index"),
                ));
            }
        }
        Ok(())
    }
}

impl Aggregate for Image {
    type Command = ImageCommand;

    fn stream(id: &str) -> String {
        streams::image(id)
    }

    fn version(&self) -> i64 {
        self.version
    }

    /// Folds one event, recorded at `at` (RFC 3339) at log `position`, into the state.
    fn apply(&mut self, event: &DomainEvent, at: &str, position: i64) {
        self.version += 1;
        self.updated_at = at.to_owned();
        match event {
            DomainEvent::ImageCreated(c) => {
                self.created = Some(c.clone());
                self.created_at = at.to_owned();
            }
            DomainEvent::ImageUpdated(u) => {
                if let Some(c) = self.created.as_mut() {
                    c.visibility = u.visibility.clone();
                }
            }
            DomainEvent::ImageDeleted => self.deleted = true,
            DomainEvent::ImageDeletionRequested(r) => self.deleting = Some(r.job_id.clone()),
            DomainEvent::ManifestRecorded(m) => {
                for blob in distinct_blobs(m) {
                    let entry = self.blobs.entry(blob.digest.clone()).or_insert(BlobRef {
                        size: blob.size,
                        refs: 0,
                    });
                    if entry.refs == 0 {
                        self.size += blob.size;
                    }
                    entry.refs += 1;
                }
                self.manifests.insert(
                    m.digest.clone(),
                    Manifest {
                        recorded: m.clone(),
                        created_at: m.created.clone().unwrap_or_else(|| at.to_owned()),
                        seq: position,
                    },
                );
            }
            DomainEvent::ManifestDeleted(d) => {
                if let Some(m) = self.manifests.remove(&d.digest) {
                    for blob in distinct_blobs(&m.recorded) {
                        if let Some(entry) = self.blobs.get_mut(&blob.digest) {
                            entry.refs -= 1;
                            if entry.refs == 0 {
                                self.size -= entry.size;
                                self.blobs.remove(&blob.digest);
                            }
                        }
                    }
                }
            }
            DomainEvent::TagPushed(t) => {
                let version = self.version;
                let pushed_at = t.pushed_at.as_deref().unwrap_or(at);
                self.tags
                    .entry(t.name.clone())
                    .and_modify(|tag| {
                        tag.digest = t.digest.clone();
                        tag.updated_at = pushed_at.to_owned();
                        tag.pushed_version = version;
                    })
                    .or_insert_with(|| Tag {
                        id: t.tag_id.clone(),
                        digest: t.digest.clone(),
                        created_at: pushed_at.to_owned(),
                        updated_at: pushed_at.to_owned(),
                        pushed_version: version,
                    });
            }
            DomainEvent::TagDeleted(t) => {
                self.tags.remove(&t.name);
            }
            _ => {}
        }
    }

    /// Decides the events for `cmd` on image `id`. Returns no events when the command would
    /// change nothing (re-recording a manifest, re-pushing a tag to the same digest).
    fn decide(&self, id: &str, cmd: ImageCommand) -> Result<Vec<DomainEvent>, DomainError> {
        if let ImageCommand::Create {
            namespace_id,
            name,
            visibility,
        } = cmd
        {
            if self.created.is_some() {
                return Err(DomainError::AlreadyExists {
                    resource: "image",
                    id: id.to_owned(),
                });
            }
            validate::image_name(&name)?;
            let visibility = visibility.unwrap_or_else(|| "inherit".to_owned());
            validate::visibility(&visibility)?;
            return Ok(vec![DomainEvent::ImageCreated(ImageCreated {
                image_id: id.to_owned(),
                namespace_id,
                name,
                visibility,
            })]);
        }
        let current = self.live(id)?;
        let mut plan = Plan::new(self);
        match cmd {
            ImageCommand::Create { .. } => unreachable!("handled above"),
            ImageCommand::SetVisibility(v) => {
                validate::visibility(&v)?;
                if v != current.visibility {
                    plan.emit(DomainEvent::ImageUpdated(ImageUpdated { visibility: v }));
                }
            }
            ImageCommand::RecordManifest(m) => {
                self.check_manifest(&m)?;
                if !self.manifests.contains_key(&m.digest) {
                    plan.emit(DomainEvent::ManifestRecorded(m));
                }
            }
            ImageCommand::PushTag {
                name,
                digest,
                new_tag_id,
            } => {
                if let Some(push) = self.tag_push(name, digest, new_tag_id, None)? {
                    plan.emit(push);
                }
            }
            ImageCommand::DeleteTag { name, force } => {
                let tag = self
                    .tags
                    .get(&name)
                    .ok_or_else(|| DomainError::not_found("tag", &name))?;
                let sharing: Vec<&String> = self
                    .tags
                    .iter()
                    .filter(|(n, t)| **n != name && t.digest == tag.digest)
                    .map(|(n, _)| n)
                    .collect();
                if !sharing.is_empty() && !force {
                    let names: Vec<&str> = sharing.iter().map(|s| s.as_str()).collect();
                    return Err(DomainError::Conflict {
                        resource: "tag",
                        message: format!(
                            "tag {name} shares its manifest with {}; delete with force=true to delete them all",
                            names.join(", ")
                        ),
                    });
                }
                let digest = tag.digest.clone();
                plan.untag(&digest);
                // A manifest an index still lists stays: it is part of that index.
                if !self.is_child(&digest) {
                    plan.delete_manifest(&digest);
                }
            }
            ImageCommand::DeleteTags { names } => {
                for name in names {
                    let Some(tag) = plan.state.tags.get(&name) else {
                        continue;
                    };
                    let digest = tag.digest.clone();
                    plan.untag(&digest);
                    if !plan.state.is_child(&digest) {
                        plan.delete_manifest(&digest);
                    }
                }
            }
            ImageCommand::DeleteManifest { digest } => {
                if !self.manifests.contains_key(&digest) {
                    return Err(DomainError::not_found("manifest", digest));
                }
                if self.is_child(&digest) {
                    return Err(DomainError::Conflict {
                        resource: "manifest",
                        message: format!("{digest} is a child of an index; delete the index"),
                    });
                }
                plan.untag(&digest);
                plan.delete_manifest(&digest);
            }
            ImageCommand::Import {
                manifests,
                tags,
                pushed_at,
            } => {
                for m in manifests {
                    if plan.state.manifests.contains_key(&m.digest) {
                        continue;
                    }
                    plan.state.check_manifest(&m)?;
                    plan.emit(DomainEvent::ManifestRecorded(m));
                }
                // When the source does not say when a tag last moved, its image's creation
                // time is the best it knows, so "keep the last N" keeps the newest images.
                for (name, digest, new_tag_id) in tags {
                    let created = pushed_at.clone().or_else(|| {
                        plan.state
                            .manifests
                            .get(&digest)
                            .and_then(|m| m.recorded.created.clone())
                    });
                    if let Some(push) = plan.state.tag_push(name, digest, new_tag_id, created)? {
                        plan.emit(push);
                    }
                }
            }
            ImageCommand::Prune { tags, manifests } => {
                for (name, pushed_version) in tags {
                    let Some(tag) = plan.state.tags.get(&name) else {
                        continue;
                    };
                    if tag.pushed_version == pushed_version {
                        let tag_id = tag.id.clone();
                        plan.emit(DomainEvent::TagDeleted(TagDeleted { tag_id, name }));
                    }
                }
                // Until nothing more can go: an index's deletion frees its planned children.
                let mut pending = manifests;
                loop {
                    let before = pending.len();
                    pending.retain(|digest| {
                        if !plan.state.manifests.contains_key(digest) {
                            return false;
                        }
                        if plan.state.is_tagged(digest) || plan.state.is_child(digest) {
                            return true;
                        }
                        plan.emit(DomainEvent::ManifestDeleted(ManifestDeleted {
                            digest: digest.clone(),
                        }));
                        false
                    });
                    if pending.len() == before {
                        break;
                    }
                }
            }
            ImageCommand::RequestDelete { job_id } => {
                if self.deleting.is_none() {
                    plan.emit(DomainEvent::ImageDeletionRequested(DeletionRequested {
                        job_id,
                    }));
                }
            }
            ImageCommand::Delete => {
                let digests: Vec<String> = self.tags.values().map(|t| t.digest.clone()).collect();
                for d in digests {
                    plan.untag(&d);
                }
                while let Some(root) = plan
                    .state
                    .manifests
                    .keys()
                    .find(|d| !plan.state.is_child(d))
                {
                    let root = root.clone();
                    plan.delete_manifest(&root);
                }
                plan.emit(DomainEvent::ImageDeleted);
            }
        }
        Ok(plan.events)
    }
}

/// Events being decided, applied to a scratch copy of the state so later steps see earlier
/// ones (which manifests are still referenced, which tags are left).
struct Plan {
    state: Image,
    events: Vec<DomainEvent>,
}

impl Plan {
    fn new(state: &Image) -> Self {
        Plan {
            state: state.clone(),
            events: Vec::new(),
        }
    }

    fn emit(&mut self, event: DomainEvent) {
        self.state.apply(&event, "", 0);
        self.events.push(event);
    }

    /// Deletes every tag pointing at `digest`.
    fn untag(&mut self, digest: &str) {
        let tags: Vec<(String, String)> = self
            .state
            .tags
            .iter()
            .filter(|(_, t)| t.digest == digest)
            .map(|(n, t)| (n.clone(), t.id.clone()))
            .collect();
        for (name, tag_id) in tags {
            self.emit(DomainEvent::TagDeleted(TagDeleted { tag_id, name }));
        }
    }

    /// Deletes `digest`, then each of its children that nothing else keeps (no tag, no
    /// other index), then its attachments with their tags, at any depth: they belong to it.
    fn delete_manifest(&mut self, digest: &str) {
        let Some(m) = self.state.manifests.get(digest) else {
            return;
        };
        let children = m.recorded.children.clone();
        let attachments = self.state.attachments(digest);
        self.emit(DomainEvent::ManifestDeleted(ManifestDeleted {
            digest: digest.to_owned(),
        }));
        for child in children {
            if self.state.manifests.contains_key(&child)
                && !self.state.is_child(&child)
                && !self.state.is_tagged(&child)
            {
                self.delete_manifest(&child);
            }
        }
        // A referrer a referrers-schema index lists goes with that index, after it.
        let (listed, alone): (Vec<String>, Vec<String>) = attachments
            .into_iter()
            .partition(|a| self.state.is_child(a));
        for a in alone.into_iter().chain(listed) {
            self.untag(&a);
            if !self.state.is_child(&a) {
                self.delete_manifest(&a);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! Given events → when a command → then events or an error. No database.
    use super::*;

    const IMG: &str = "i1";

    fn digest(n: u32) -> String {
        format!("sha256:{n:064x}")
    }

    fn blob(n: u32, size: i64) -> Blob {
        Blob {
            digest: digest(n),
            size,
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
        }
    }

    fn manifest(n: u32, layers: &[(u32, i64)]) -> ManifestRecorded {
        ManifestRecorded {
            digest: digest(n),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            platform: None,
            config: Some(blob(n + 10_000, 10)),
            layers: layers.iter().map(|(d, s)| blob(*d, *s)).collect(),
            children: vec![],
            created: None,
            subject: None,
            artifact_type: None,
        }
    }

    fn index(n: u32, children: &[u32]) -> ManifestRecorded {
        ManifestRecorded {
            digest: digest(n),
            media_type: "application/vnd.oci.image.index.v1+json".into(),
            platform: None,
            config: None,
            layers: vec![],
            children: children.iter().map(|c| digest(*c)).collect(),
            created: None,
            subject: None,
            artifact_type: None,
        }
    }

    struct Given(Image);

    fn given() -> Given {
        let mut img = Image::default();
        let events = img
            .decide(
                IMG,
                ImageCommand::Create {
                    namespace_id: "n".into(),
                    name: "app".into(),
                    visibility: None,
                },
            )
            .unwrap();
        events.iter().for_each(|e| img.apply(e, "t0", 0));
        Given(img)
    }

    impl Given {
        fn when(&mut self, cmd: ImageCommand) -> Result<Vec<DomainEvent>, DomainError> {
            let events = self.0.decide(IMG, cmd)?;
            events.iter().for_each(|e| self.0.apply(e, "t", 0));
            Ok(events)
        }

        fn record(mut self, m: ManifestRecorded) -> Self {
            self.when(ImageCommand::RecordManifest(m)).unwrap();
            self
        }

        fn tag(mut self, name: &str, n: u32) -> Self {
            self.when(push(name, n)).unwrap();
            self
        }
    }

    fn push(name: &str, n: u32) -> ImageCommand {
        ImageCommand::PushTag {
            name: name.into(),
            digest: digest(n),
            new_tag_id: format!("tag-{name}"),
        }
    }

    fn delete_tag(name: &str, force: bool) -> ImageCommand {
        ImageCommand::DeleteTag {
            name: name.into(),
            force,
        }
    }

    #[test]
    fn a_layer_shared_by_two_manifests_counts_once() {
        let g = given()
            .record(manifest(1, &[(100, 1000), (101, 50)]))
            .record(manifest(2, &[(100, 1000), (102, 7)]));
        // 1000 + 50 + 7 + two configs of 10
        assert_eq!(g.0.size, 1077);
        assert_eq!(g.0.blobs[&digest(100)].refs, 2);
    }

    #[test]
    fn a_blob_listed_twice_in_one_manifest_counts_once() {
        let g = given().record(manifest(1, &[(100, 1000), (100, 1000)]));
        assert_eq!(g.0.size, 1010);
    }

    #[test]
    fn recording_a_manifest_again_changes_nothing() {
        let mut g = given().record(manifest(1, &[(100, 1)]));
        assert_eq!(
            g.when(ImageCommand::RecordManifest(manifest(1, &[(100, 1)]))),
            Ok(vec![])
        );
    }

    #[test]
    fn a_blob_with_two_sizes_is_refused() {
        let mut g = given().record(manifest(1, &[(100, 1)]));
        let err = g
            .when(ImageCommand::RecordManifest(manifest(2, &[(100, 2)])))
            .unwrap_err();
        assert!(matches!(err, DomainError::Invalid { field: "blob", .. }));
    }

    #[test]
    fn an_index_needs_its_children_first() {
        let mut g = given();
        let err = g
            .when(ImageCommand::RecordManifest(index(9, &[1])))
            .unwrap_err();
        assert!(matches!(
            err,
            DomainError::Invalid {
                field: "children",
                ..
            }
        ));
    }

    #[test]
    fn an_index_counts_its_childrens_blobs() {
        let g = given()
            .record(manifest(1, &[(100, 1000)]))
            .record(manifest(2, &[(101, 500)]))
            .record(index(9, &[1, 2]))
            .tag("latest", 9);
        assert_eq!(g.0.size, 1520);
    }

    #[test]
    fn pushing_a_tag_needs_the_manifest() {
        let mut g = given();
        assert!(matches!(
            g.when(push("v1", 1)),
            Err(DomainError::NotFound {
                resource: "manifest",
                ..
            })
        ));
    }

    #[test]
    fn a_moved_tag_keeps_its_id_and_leaves_the_old_manifest_untagged() {
        let mut g = given()
            .record(manifest(1, &[(100, 1)]))
            .record(manifest(2, &[(101, 2)]))
            .tag("v1", 1);
        let events = g.when(push("v1", 2)).unwrap();
        assert_eq!(
            events,
            vec![DomainEvent::TagPushed(TagPushed {
                tag_id: "tag-v1".into(),
                name: "v1".into(),
                digest: digest(2),
                pushed_at: None,
            })]
        );
        assert!(g.0.manifests.contains_key(&digest(1)));
        assert!(!g.0.is_tagged(&digest(1)));
        assert_eq!(g.0.size, 1 + 2 + 20);
        assert_eq!(g.when(push("v1", 2)), Ok(vec![]));
    }

    #[test]
    fn deleting_the_only_tag_deletes_its_manifest_and_frees_its_unique_blobs() {
        let mut g = given()
            .record(manifest(1, &[(100, 1000), (101, 5)]))
            .record(manifest(2, &[(100, 1000)]))
            .tag("a", 1)
            .tag("b", 2);
        let events = g.when(delete_tag("a", false)).unwrap();
        assert_eq!(events.len(), 2);
        assert!(matches!(events[1], DomainEvent::ManifestDeleted(_)));
        // layer 100 still used by manifest 2; 101 and manifest 1's config are freed
        assert_eq!(g.0.size, 1010);
    }

    #[test]
    fn a_shared_digest_needs_force_and_force_deletes_every_tag() {
        let mut g = given()
            .record(manifest(1, &[(100, 1)]))
            .tag("a", 1)
            .tag("b", 1)
            .tag("c", 1);
        let err = g.when(delete_tag("a", false)).unwrap_err();
        assert!(matches!(
            err,
            DomainError::Conflict {
                resource: "tag",
                ..
            }
        ));
        assert_eq!(g.0.tags.len(), 3);
        let events = g.when(delete_tag("a", true)).unwrap();
        assert_eq!(events.len(), 4);
        assert!(g.0.tags.is_empty());
        assert!(g.0.manifests.is_empty());
        assert_eq!(g.0.size, 0);
    }

    #[test]
    fn deleting_an_index_deletes_children_nothing_else_keeps() {
        let mut g = given()
            .record(manifest(1, &[(100, 1)]))
            .record(manifest(2, &[(101, 1)]))
            .record(manifest(3, &[(102, 1)]))
            .record(index(8, &[1, 2]))
            .record(index(9, &[2, 3]))
            .tag("all", 8)
            .tag("one", 1);
        g.when(delete_tag("all", false)).unwrap();
        // 1 is tagged, 2 is a child of index 9: both stay
        assert!(g.0.manifests.contains_key(&digest(1)));
        assert!(g.0.manifests.contains_key(&digest(2)));
        assert!(!g.0.manifests.contains_key(&digest(8)));
    }

    #[test]
    fn a_child_of_an_index_cannot_be_deleted_alone() {
        let mut g = given()
            .record(manifest(1, &[(100, 1)]))
            .record(index(9, &[1]));
        let err = g
            .when(ImageCommand::DeleteManifest { digest: digest(1) })
            .unwrap_err();
        assert!(matches!(
            err,
            DomainError::Conflict {
                resource: "manifest",
                ..
            }
        ));
    }

    #[test]
    fn deleting_an_image_deletes_everything_under_it_first() {
        let mut g = given()
            .record(manifest(1, &[(100, 1)]))
            .record(index(9, &[1]))
            .tag("v", 9)
            .tag("w", 1);
        let events = g.when(ImageCommand::Delete).unwrap();
        assert_eq!(events.len(), 5);
        assert_eq!(events.last(), Some(&DomainEvent::ImageDeleted));
        assert!(g.0.deleted && g.0.manifests.is_empty() && g.0.size == 0);
        assert!(matches!(
            g.when(ImageCommand::SetVisibility("public".into())),
            Err(DomainError::NotFound {
                resource: "image",
                ..
            })
        ));
    }

    #[test]
    fn visibility_is_validated_and_only_changes_are_recorded() {
        let mut g = given();
        assert!(matches!(
            g.when(ImageCommand::SetVisibility("secret".into())),
            Err(DomainError::Invalid {
                field: "visibility",
                ..
            })
        ));
        assert_eq!(
            g.when(ImageCommand::SetVisibility("inherit".into())),
            Ok(vec![])
        );
        assert_eq!(
            g.when(ImageCommand::SetVisibility("public".into()))
                .unwrap()
                .len(),
            1
        );
    }

    fn prune(tags: &[(&str, i64)], manifests: &[u32]) -> ImageCommand {
        ImageCommand::Prune {
            tags: tags.iter().map(|(n, v)| ((*n).into(), *v)).collect(),
            manifests: manifests.iter().map(|m| digest(*m)).collect(),
        }
    }

    fn deleted(events: &[DomainEvent]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                DomainEvent::TagDeleted(t) => format!("tag {}", t.name),
                DomainEvent::ManifestDeleted(m) => format!("manifest {}", m.digest),
                other => format!("{other:?}"),
            })
            .collect()
    }

    /// A manifest attached to `subject` by its `subject` field.
    fn referrer(n: u32, subject: u32) -> ManifestRecorded {
        ManifestRecorded {
            subject: Some(digest(subject)),
            artifact_type: Some("application/spdx+json".into()),
            ..manifest(n, &[(n + 500, 3)])
        }
    }

    /// The tag of `subject`'s digest in a scheme (`""` is the referrers tag schema).
    fn scheme(subject: u32, suffix: &str) -> String {
        format!("{}{suffix}", digest(subject).replace(':', "-"))
    }

    /// Image 1 tagged `v1`, with a cosign signature (2), an SBOM by subject (3) listed by a
    /// referrers-schema index (4), and a signature of the SBOM (5); image 6 tagged `v2`.
    fn attached() -> Given {
        given()
            .record(manifest(1, &[(100, 1)]))
            .tag("v1", 1)
            .record(manifest(2, &[(101, 1)]))
            .tag(&scheme(1, ".sig"), 2)
            .record(referrer(3, 1))
            .record(index(4, &[3]))
            .tag(&scheme(1, ""), 4)
            .record(manifest(5, &[(102, 1)]))
            .tag(&scheme(3, ".sig"), 5)
            .record(manifest(6, &[(103, 1)]))
            .tag("v2", 6)
    }

    #[test]
    fn deleting_a_tag_deletes_its_manifests_attachments_at_any_depth_in_one_decision() {
        let mut g = attached();
        let events = g.when(delete_tag("v1", false)).unwrap();
        let mut gone = deleted(&events);
        gone.sort();
        let mut expected: Vec<String> =
            (1..=5).map(|n| format!("manifest {}", digest(n))).collect();
        expected.extend(["tag v1".to_owned()]);
        expected.extend(
            [scheme(1, ".sig"), scheme(1, ""), scheme(3, ".sig")].map(|t| format!("tag {t}")),
        );
        expected.sort();
        assert_eq!(gone, expected);
        assert_eq!(g.0.tags.keys().collect::<Vec<_>>(), ["v2"]);
        assert_eq!(g.0.manifests.keys().collect::<Vec<_>>(), [&digest(6)]);
        assert_eq!(g.0.size, 11, "only v2's config and layer remain");
        // The same through DeleteManifest and an image's tags deleted in bulk.
        for cmd in [
            ImageCommand::DeleteManifest { digest: digest(1) },
            ImageCommand::DeleteTags {
                names: vec!["v1".into()],
            },
        ] {
            let mut g = attached();
            g.when(cmd).unwrap();
            assert_eq!(g.0.manifests.keys().collect::<Vec<_>>(), [&digest(6)]);
        }
    }

    #[test]
    fn deleting_an_attachment_leaves_its_subject() {
        let mut g = attached();
        g.when(delete_tag(&scheme(1, ".sig"), false)).unwrap();
        assert!(g.0.manifests.contains_key(&digest(1)));
        assert!(!g.0.manifests.contains_key(&digest(2)));
        assert_eq!(g.0.manifests.len(), 5);
    }

    #[test]
    fn prune_deletes_planned_tags_and_then_their_manifests() {
        let mut g = given()
            .record(manifest(1, &[(100, 1)]))
            .tag("old", 1)
            .record(manifest(2, &[(101, 1)]))
            .tag("new", 2);
        let v = g.0.tags["old"].pushed_version;
        let events = g.when(prune(&[("old", v)], &[1])).unwrap();
        assert_eq!(
            deleted(&events),
            ["tag old", format!("manifest {}", digest(1)).as_str()]
        );
        assert!(g.0.tags.contains_key("new"));
    }

    #[test]
    fn prune_leaves_a_tag_moved_since_the_plan_and_its_new_manifest() {
        let g = given()
            .record(manifest(1, &[(100, 1)]))
            .record(manifest(2, &[(101, 1)]))
            .tag("v1", 1);
        let planned = g.0.tags["v1"].pushed_version;
        // After planning, v1 is pushed again (moved to manifest 2).
        let mut g = Given(g.0).tag("v1", 2);
        let events = g.when(prune(&[("v1", planned)], &[1])).unwrap();
        // The tag survives; manifest 1 (untagged now, as planned) still goes.
        assert_eq!(deleted(&events), [format!("manifest {}", digest(1))]);
        assert_eq!(g.0.tags["v1"].digest, digest(2));
    }

    #[test]
    fn prune_keeps_a_planned_manifest_that_a_new_tag_points_at() {
        let g = given().record(manifest(1, &[(100, 1)])).tag("a", 1);
        let planned = g.0.tags["a"].pushed_version;
        let mut g = Given(g.0).tag("b", 1);
        let events = g.when(prune(&[("a", planned)], &[1])).unwrap();
        assert_eq!(deleted(&events), ["tag a"]);
        assert!(g.0.manifests.contains_key(&digest(1)));
    }

    #[test]
    fn prune_deletes_a_planned_child_after_its_index_in_any_order() {
        let mut g = given()
            .record(manifest(1, &[(100, 1)]))
            .record(manifest(2, &[(101, 1)]))
            .record(index(3, &[1, 2]))
            .tag("multi", 3);
        let v = g.0.tags["multi"].pushed_version;
        // Children listed first: they wait for the index.
        let events = g.when(prune(&[("multi", v)], &[1, 2, 3])).unwrap();
        assert_eq!(events.len(), 4);
        assert!(g.0.manifests.is_empty());
        assert_eq!(g.0.size, 0);
    }

    #[test]
    fn prune_run_twice_changes_nothing_the_second_time() {
        let mut g = given().record(manifest(1, &[(100, 1)])).tag("a", 1);
        let v = g.0.tags["a"].pushed_version;
        assert_eq!(g.when(prune(&[("a", v)], &[1])).unwrap().len(), 2);
        assert_eq!(g.when(prune(&[("a", v)], &[1])), Ok(vec![]));
    }

    #[test]
    fn an_import_records_what_is_missing_and_moves_tags_in_one_decision() {
        let mut g = given().record(manifest(1, &[(100, 1)])).tag("v1", 1);
        let cmd = ImageCommand::Import {
            manifests: vec![
                manifest(1, &[(100, 1)]),
                manifest(2, &[(101, 2)]),
                index(3, &[2]),
            ],
            tags: vec![
                ("v1".into(), digest(1), "new-a".into()),
                ("v2".into(), digest(3), "new-b".into()),
            ],
            pushed_at: None,
        };
        let events = g.when(cmd.clone()).unwrap();
        // Manifest 1 and tag v1 were there: only 2, the index and v2 are new.
        assert_eq!(events.len(), 3);
        assert_eq!(g.0.tags["v2"].digest, digest(3));
        assert_eq!(
            g.when(cmd),
            Ok(vec![]),
            "the same import again records nothing"
        );
        let bad = ImageCommand::Import {
            manifests: vec![index(4, &[9])],
            tags: vec![],
            pushed_at: None,
        };
        assert!(
            g.when(bad).is_err(),
            "an index before its children is refused"
        );
    }
}

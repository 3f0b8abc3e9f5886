//! Prune plans as stored: the state a plan was made from, and what it chose.

use std::sync::Arc;

use foldhash::{HashMap, HashMapExt};

use serde::{Deserialize, Serialize};

use crate::domain::event::Blob;
use crate::domain::parse_time;
use crate::domain::retention::{ImageState, KeepReason, ManifestState, Reason, TagState};
use crate::store::StoreError;

/// The images of one namespace with their tags and manifests, read in one transaction, and
/// the log position they are current at.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub position: i64,
    pub images: Vec<SnapshotImage>,
}

/// An image of a snapshot: its tags, manifests and index children as the snapshot query
/// packed them (see [`unpack_image`]), unpacked on demand by [`SnapshotImage::state`]. Its
/// id and name are shared with the plan items made from it.
#[derive(Debug, Clone)]
pub struct SnapshotImage {
    pub id: Arc<str>,
    pub name: Arc<str>,
    pub tags: String,
    pub manifests: String,
    pub children: String,
}

impl SnapshotImage {
    /// The image's state, borrowing from its packed text; an error names the image and the
    /// record at fault.
    pub fn state(&self) -> Result<ImageState<'_>, StoreError> {
        unpack_image(&self.tags, &self.manifests, &self.children)
            .map_err(|e| StoreError::unreadable(format!("image {}: {e}", self.id)))
    }
}

/// A manifest's layers as the `manifests.layers_packed` column holds them: `digest size`
/// for each layer, in order, all separated by a space (neither occurs in a digest or a
/// number). Prune planning reads them from there rather than from `manifest_layers`, which
/// holds a row per layer: a million manifests are a million rows to read, not three million.
pub fn pack_layers(layers: &[Blob]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for layer in layers {
        let sep = if out.is_empty() { "" } else { " " };
        // Writing into a String cannot fail.
        let _ = write!(out, "{sep}{} {}", layer.digest, layer.size);
    }
    out
}

/// The `(digest, size)` of each layer in a `layers_packed` value (see [`pack_layers`]), in
/// order, appended to `out`. A layer without a size, or a size that is no number, is an
/// error naming it.
pub fn unpack_layers<'a>(packed: &'a str, out: &mut Vec<(&'a str, i64)>) -> Result<(), String> {
    let mut parts = packed.split(' ').filter(|p| !p.is_empty());
    while let Some(layer) = parts.next() {
        let size = parts
            .next()
            .ok_or_else(|| format!("layer {layer} has no size"))?;
        let size = size
            .parse()
            .map_err(|_| format!("layer {layer}: size {size:?} is not a number"))?;
        out.push((layer, size));
    }
    Ok(())
}

/// One image's state from the text the snapshot query packs it into (records separated by
/// `,`, fields by a space; the layouts are those of the snapshot query). A record of the
/// wrong shape is an error naming it, never skipped: a plan made from a misread state could
/// delete what it should keep.
pub fn unpack_image<'a>(
    tags: &'a str,
    manifests: &'a str,
    children: &'a str,
) -> Result<ImageState<'a>, String> {
    fn records(packed: &str) -> impl Iterator<Item = &str> {
        packed.split(',').filter(|r| !r.is_empty())
    }
    fn fields<'a, const N: usize>(what: &str, record: &'a str) -> Result<[&'a str; N], String> {
        let mut out = [""; N];
        let mut parts = record.split(' ');
        for slot in &mut out {
            *slot = parts
                .next()
                .ok_or_else(|| format!("{what} record {record:?} has too few fields"))?;
        }
        match parts.next() {
            None => Ok(out),
            Some(_) => Err(format!("{what} record {record:?} has too many fields")),
        }
    }
    let number = |what: &str, n: &str| {
        n.parse::<i64>()
            .map_err(|_| format!("{what}: {n:?} is not a number"))
    };
    let time = |t: &str| parse_time(t).ok_or_else(|| format!("{t:?} is not a stored time"));

    let mut state = ImageState::default();
    for record in records(tags) {
        let [name, digest, pushed_at, version] = fields("tag", record)?;
        state.tags.push(TagState {
            name,
            digest,
            pushed_at: time(pushed_at)?,
            pushed_version: number("tag version", version)?,
        });
    }
    let mut at: HashMap<&str, usize> = HashMap::new();
    for record in records(manifests) {
        let (head, layers) = record
            .split_once(';')
            .ok_or_else(|| format!("manifest record {record:?} has no layer list"))?;
        let (digest, recorded_at, subject, config) = match head.split(' ').count() {
            3 => {
                let [digest, recorded_at, subject] = fields("manifest", head)?;
                (digest, recorded_at, subject, None)
            }
            _ => {
                let [digest, recorded_at, subject, config, size] = fields("manifest", head)?;
                (digest, recorded_at, subject, Some((config, size)))
            }
        };
        let mut blobs = Vec::new();
        if let Some((config, size)) = config {
            blobs.push((config, number("config size", size)?));
        }
        unpack_layers(layers, &mut blobs).map_err(|e| format!("manifest {digest}: {e}"))?;
        at.insert(digest, state.manifests.len());
        state.manifests.push(ManifestState {
            digest,
            recorded_at: time(recorded_at)?,
            subject: (subject != "-").then_some(subject),
            children: Vec::new(),
            blobs,
        });
    }
    for record in records(children) {
        let [parent, child] = fields("index child", record)?;
        if let Some(&m) = at.get(parent) {
            state.manifests[m].children.push(child);
        }
    }
    Ok(state)
}

/// What a snapshot read does with each page of images, on a blocking thread, while the
/// database reads the next page.
pub type OnPage<T> = std::sync::Arc<dyn Fn(Vec<SnapshotImage>) -> T + Send + Sync>;

/// A stored plan's summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanHeader {
    pub job_id: String,
    /// The log position the plan was made at.
    pub position: i64,
    pub policy_id: Option<String>,
    pub policy_version: Option<i64>,
    /// The job attempt that made the plan.
    pub attempt: i64,
    /// Images with at least one deletion.
    pub images: i64,
    pub tags: i64,
    pub manifests: i64,
    pub bytes: i64,
    pub created_at: String,
    /// Tags and manifests the plan keeps, when it lists them (a dry run's does); `None`
    /// for a plan that lists only its deletions.
    pub kept_tags: Option<i64>,
    pub kept_manifests: Option<i64>,
}

/// One planned deletion: a tag (`kind` `tag`, with its name and the version that last
/// pushed it) or a manifest (`kind` `manifest`).
///
/// A plan can hold millions of items, so an item holds no more heap than it must: the
/// image's id and name are shared by all its items, and the kind and reason are enums.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanItem {
    pub idx: i64,
    pub image_id: Arc<str>,
    pub image_name: Arc<str>,
    pub kind: ItemKind,
    pub tag: Option<String>,
    pub digest: String,
    pub pushed_version: Option<i64>,
    /// The rule that chose it (`keep_last`, `older_than`, `untagged`…).
    pub reason: Reason,
    /// For `attachment_of`, the manifest it is attached to.
    pub subject: Option<String>,
    /// Bytes only this deletion frees (manifests; 0 for tags).
    pub bytes: i64,
}

/// One tag or manifest a dry run's plan keeps, with the rule that kept it; numbered by `idx`
/// in plan order, apart from the deletions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptItem {
    pub idx: i64,
    pub image_id: Arc<str>,
    pub image_name: Arc<str>,
    pub kind: ItemKind,
    pub tag: Option<String>,
    pub digest: String,
    pub reason: KeepReason,
    /// For `attachment_of`, the kept manifest it is attached to.
    pub subject: Option<String>,
}

/// What a plan item deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemKind {
    Tag,
    Manifest,
}

impl ItemKind {
    pub const ALL: [ItemKind; 2] = [ItemKind::Tag, ItemKind::Manifest];

    /// Its name as plans store it and the API shows it (the serde name).
    pub fn as_str(self) -> &'static str {
        match self {
            ItemKind::Tag => "tag",
            ItemKind::Manifest => "manifest",
        }
    }

    /// The kind named `name` (see [`ItemKind::as_str`]).
    pub fn parse(name: &str) -> Option<ItemKind> {
        ItemKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "2026-11-01T10:00:00.000000Z";

    #[test]
    fn an_image_unpacks_with_its_configs_layers_and_children_in_order() {
        let tags = format!("v1 sha256:aa {T} 7,latest sha256:ix {T} 9");
        let layers = [("sha256:l1", 100), ("sha256:l2", 200)].map(|(digest, size)| Blob {
            digest: digest.into(),
            size,
            media_type: "application/vnd.oci.image.layer.v1.tar".into(),
        });
        let manifests = format!(
            "sha256:aa {T} - sha256:c1 15;{},sha256:ix {T} -;,sha256:bb {T} sha256:aa;",
            pack_layers(&layers)
        );
        let children = "sha256:ix sha256:bb,sha256:ix sha256:aa";
        let state = unpack_image(&tags, &manifests, children).unwrap();

        assert_eq!(state.tags.len(), 2);
        assert_eq!(state.tags[1].name, "latest");
        assert_eq!(state.tags[1].digest, "sha256:ix");
        assert_eq!(state.tags[1].pushed_version, 9);
        assert_eq!(state.tags[1].pushed_at, parse_time(T).unwrap());
        let aa = &state.manifests[0];
        assert_eq!(
            aa.blobs,
            [("sha256:c1", 15), ("sha256:l1", 100), ("sha256:l2", 200),]
        );
        // No config, no layers.
        assert!(state.manifests[1].blobs.is_empty());
        assert_eq!(state.manifests[1].children, ["sha256:bb", "sha256:aa"]);
        assert!(state.manifests[2].blobs.is_empty());
        assert_eq!(state.manifests[0].subject, None);
        assert_eq!(state.manifests[2].subject, Some("sha256:aa"));
    }

    #[test]
    fn a_snapshot_image_unpacks_on_demand_and_its_errors_name_it() {
        let image = |tags: &str| SnapshotImage {
            id: "img-7".into(),
            name: "app".into(),
            tags: tags.into(),
            manifests: format!("sha256:aa {T} -;"),
            children: String::new(),
        };
        let good = image(&format!("v1 sha256:aa {T} 7"));
        let state = good.state().unwrap();
        assert_eq!((state.tags[0].name, state.manifests.len()), ("v1", 1));
        let e = image(&format!("v1 sha256:aa {T}")).state().unwrap_err();
        let e = e.to_string();
        assert!(e.contains("image img-7") && e.contains("too few"), "{e}");
    }

    #[test]
    fn an_item_kind_is_stored_under_its_serde_name_and_read_back() {
        for kind in ItemKind::ALL {
            assert_eq!(serde_json::json!(kind), kind.as_str());
            assert_eq!(ItemKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(ItemKind::parse("blob"), None);
    }

    #[test]
    fn an_image_without_rows_unpacks_empty() {
        assert_eq!(unpack_image("", "", "").unwrap(), ImageState::default());
        assert_eq!(pack_layers(&[]), "");
    }

    #[test]
    fn a_record_of_the_wrong_shape_is_an_error_naming_it() {
        let e = unpack_image(&format!("v1 sha256:aa {T}"), "", "").unwrap_err();
        assert!(e.contains("tag record") && e.contains("too few"), "{e}");
        let e = unpack_image("", &format!("sha256:aa {T} - sha256:c1;"), "").unwrap_err();
        assert!(
            e.contains("manifest record") && e.contains("too few"),
            "{e}"
        );
        let e = unpack_image("", &format!("sha256:aa {T} -"), "").unwrap_err();
        assert!(e.contains("no layer list"), "{e}");
        let e = unpack_image("", &format!("sha256:aa {T} -;sha256:l1"), "").unwrap_err();
        assert!(e.contains("sha256:l1 has no size"), "{e}");
        let e = unpack_image("", &format!("sha256:aa {T} -;sha256:l1 big"), "").unwrap_err();
        assert!(e.contains("not a number"), "{e}");
        let e = unpack_image(&format!("v1 sha256:aa {T} 7 x"), "", "").unwrap_err();
        assert!(e.contains("too many"), "{e}");
        let e = unpack_image(&format!("v1 sha256:aa {T} seven"), "", "").unwrap_err();
        assert!(e.contains("not a number"), "{e}");
        let e = unpack_image("v1 sha256:aa yesterday 7", "", "").unwrap_err();
        assert!(e.contains("not a stored time"), "{e}");
    }
}

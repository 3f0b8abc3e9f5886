//! Prune selection (design §8): which tags and manifests of one image a policy's rules
//! delete. A pure function of the image's state, the rules and the time, so a dry run and a
//! real run on the same state choose the same set.
//!
//! For each image:
//!
//! 1. **Candidates** are the tags whose name matches `tag_pattern` and does not match
//!    `keep_tag_pattern` (patterns search the name, as regexes do: anchor them to match all
//!    of it; an empty pattern matches every name). Every other tag is kept.
//! 2. Of the candidates, the `keep_last` most recently pushed are kept. A tag moved to
//!    another manifest counts as pushed when it moved.
//! 3. Of the rest, those pushed before `now - older_than` are deleted (all of the rest when
//!    there is no `older_than`).
//! 4. A manifest no index lists is deleted when every tag that pointed to it is deleted;
//!    with `untagged`, also when no tag points to it and it was recorded before
//!    `now - older_than`. A manifest an index lists is deleted only once every index
//!    listing it is, and then goes with them.
//! 5. Never deleted: a manifest a kept tag points to, and any child or attachment (at any
//!    depth) of such a manifest.
//! 6. **Attachments** (design §11) follow their subject: a manifest whose `subject` is
//!    another manifest of the image, or one tagged `sha256-<hex>.sig|.att|.sbom` (cosign) or
//!    `sha256-<hex>` (the OCI referrers tag schema) naming one. Their tags are never
//!    candidates and count toward no `keep_last`; they are deleted, with their tags and at
//!    any depth, when every manifest they are attached to is (`attachment_of`). An
//!    attachment whose subject is not in the image is an orphan, and goes by the `untagged`
//!    rule (`orphan_attachment`), as does a scheme tag naming a digest the image lacks.
//!
//! A dry run also says what it keeps and why ([`explain`]): each kept tag and manifest with
//! the [`KeepReason`] that spared it, so a reviewer sees the whole image, not only its
//! deletions.
//!
//! The bytes a deletion frees are those of the blobs no remaining manifest of the image
//! references; each such blob is counted once, against the first deleted manifest (by
//! digest) that held it.

use foldhash::{HashMap, HashSet, HashSetExt};

use chrono::{DateTime, Duration, Utc};
use regex::{Regex, RegexBuilder};
use serde::{Deserialize, Serialize};

use super::DomainError;

/// The longest pattern accepted, in bytes.
pub const MAX_PATTERN_LEN: usize = 256;
/// The most memory a compiled pattern may take (the regex engine runs in linear time; this
/// bounds its size).
const PATTERN_SIZE_LIMIT: usize = 256 * 1024;

/// The rules as a policy states them (the `rules` object of a policy body).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesSpec {
    /// Tags considered for deletion (a regex); absent: every tag.
    pub tag_pattern: Option<String>,
    /// Tags always kept (a regex).
    pub keep_tag_pattern: Option<String>,
    /// Candidates kept per image, most recently pushed first.
    pub keep_last: Option<u32>,
    /// Only what was pushed longer ago than this goes (`90s`, `15m`, `12h`, `30d`, `2w`).
    pub older_than: Option<String>,
    /// Also delete manifests no tag points to.
    #[serde(default)]
    pub untagged: bool,
}

/// Rules ready to select with.
#[derive(Debug, Clone)]
pub struct Rules {
    pub tag_pattern: Regex,
    pub keep_tag_pattern: Option<Regex>,
    pub keep_last: usize,
    pub older_than: Option<Duration>,
    pub untagged: bool,
}

impl Rules {
    /// Checks and compiles `spec`; an error names the field at fault.
    pub fn compile(spec: &RulesSpec) -> Result<Rules, DomainError> {
        let tag_pattern = pattern(
            "rules.tag_pattern",
            spec.tag_pattern.as_deref().unwrap_or(""),
        )?;
        let keep_tag_pattern = spec
            .keep_tag_pattern
            .as_deref()
            .map(|p| pattern("rules.keep_tag_pattern", p))
            .transpose()?;
        let older_than = spec
            .older_than
            .as_deref()
            .map(|d| parse_duration(d).map_err(|r| DomainError::invalid("rules.older_than", r)))
            .transpose()?;
        Ok(Rules {
            tag_pattern,
            keep_tag_pattern,
            keep_last: spec.keep_last.unwrap_or(0) as usize,
            older_than,
            untagged: spec.untagged,
        })
    }
}

fn pattern(field: &'static str, p: &str) -> Result<Regex, DomainError> {
    if p.len() > MAX_PATTERN_LEN {
        return Err(DomainError::invalid(
            field,
            format!("at most {MAX_PATTERN_LEN} bytes"),
        ));
    }
    RegexBuilder::new(p)
        .size_limit(PATTERN_SIZE_LIMIT)
        .build()
        .map_err(|e| DomainError::invalid(field, format!("not a valid regex: {e}")))
}

/// Parses `<number><unit>`, unit one of `s`, `m`, `h`, `d`, `w`, into a duration of at most
/// 100 years.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let expected = || format!("{text:?} is not a duration like 90s, 15m, 12h, 30d or 2w");
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(expected)?;
    let (number, unit) = text.split_at(split);
    let n: i64 = number.parse().map_err(|_| expected())?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        _ => return Err(expected()),
    };
    const MAX_SECONDS: i64 = 100 * 366 * 86_400;
    match n.checked_mul(seconds) {
        Some(s) if s <= MAX_SECONDS => Ok(Duration::seconds(s)),
        _ => Err(format!("{text:?} is longer than 100 years")),
    }
}

/// A tag as selection sees it. The state borrows its text (from the snapshot's packed rows):
/// a namespace's snapshot holds millions of names and digests, and selection copies only
/// those it plans to delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagState<'a> {
    pub name: &'a str,
    pub digest: &'a str,
    /// When the tag was last pushed or moved.
    pub pushed_at: DateTime<Utc>,
    /// The image stream version of that push: orders pushes made at one instant, and tells
    /// a run whether the tag moved after its plan.
    pub pushed_version: i64,
}

/// A manifest as selection sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestState<'a> {
    pub digest: &'a str,
    pub recorded_at: DateTime<Utc>,
    /// The manifest it names as its OCI 1.1 `subject`, if any.
    pub subject: Option<&'a str>,
    /// The manifests an index lists; empty for an image manifest.
    pub children: Vec<&'a str>,
    /// Its distinct blobs, `(digest, size)`.
    pub blobs: Vec<(&'a str, i64)>,
}

/// One image's tags and manifests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageState<'a> {
    pub tags: Vec<TagState<'a>>,
    pub manifests: Vec<ManifestState<'a>>,
}

/// The rule that chose an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// A candidate tag, with neither `keep_last` nor `older_than` to spare it.
    TagPattern,
    /// A candidate tag beyond the `keep_last` most recent (no `older_than`).
    KeepLast,
    /// A candidate tag beyond `keep_last`, pushed before the `older_than` cut-off.
    OlderThan,
    /// A manifest every tag of which is deleted.
    TagsDeleted,
    /// A manifest without tags, by the `untagged` rule.
    Untagged,
    /// A child of a deleted index that no remaining index lists.
    ChildOfDeleted,
    /// An attachment (signature, SBOM, attestation, referrers index) of a deleted manifest.
    AttachmentOf,
    /// An attachment whose subject is not in the image, by the `untagged` rule.
    OrphanAttachment,
}

impl Reason {
    /// Its name as plans store it and the API shows it (the serde name).
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::TagPattern => "tag_pattern",
            Reason::KeepLast => "keep_last",
            Reason::OlderThan => "older_than",
            Reason::TagsDeleted => "tags_deleted",
            Reason::Untagged => "untagged",
            Reason::ChildOfDeleted => "child_of_deleted",
            Reason::AttachmentOf => "attachment_of",
            Reason::OrphanAttachment => "orphan_attachment",
        }
    }

    /// Every reason (the names [`Reason::parse`] knows).
    pub const ALL: [Reason; 8] = [
        Reason::TagPattern,
        Reason::KeepLast,
        Reason::OlderThan,
        Reason::TagsDeleted,
        Reason::Untagged,
        Reason::ChildOfDeleted,
        Reason::AttachmentOf,
        Reason::OrphanAttachment,
    ];

    /// The reason named `name` (see [`Reason::as_str`]).
    pub fn parse(name: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == name)
    }
}

/// The rule that kept an item (see [`explain`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeepReason {
    /// A tag `tag_pattern` does not match: no candidate.
    NotMatched,
    /// A tag `keep_tag_pattern` matches.
    KeepTagPattern,
    /// A candidate among the `keep_last` most recently pushed.
    KeepLast,
    /// A tag pushed, or an untagged manifest recorded, after the `older_than` cut-off.
    NewerThan,
    /// An attachment (or its tag) of a kept manifest.
    AttachmentOf,
    /// A manifest a kept tag points to.
    KeptTag,
    /// A manifest a kept index lists.
    ChildOfKept,
    /// A manifest no tag points to, kept because the rules do not set `untagged`.
    UntaggedNotSet,
}

impl KeepReason {
    /// Its name as plans store it and the API shows it (the serde name).
    pub fn as_str(self) -> &'static str {
        match self {
            KeepReason::NotMatched => "not_matched",
            KeepReason::KeepTagPattern => "keep_tag_pattern",
            KeepReason::KeepLast => "keep_last",
            KeepReason::NewerThan => "newer_than",
            KeepReason::AttachmentOf => "attachment_of",
            KeepReason::KeptTag => "kept_tag",
            KeepReason::ChildOfKept => "child_of_kept",
            KeepReason::UntaggedNotSet => "untagged_not_set",
        }
    }

    /// Every reason (the names [`KeepReason::parse`] knows).
    pub const ALL: [KeepReason; 8] = [
        KeepReason::NotMatched,
        KeepReason::KeepTagPattern,
        KeepReason::KeepLast,
        KeepReason::NewerThan,
        KeepReason::AttachmentOf,
        KeepReason::KeptTag,
        KeepReason::ChildOfKept,
        KeepReason::UntaggedNotSet,
    ];

    /// The reason named `name` (see [`KeepReason::as_str`]).
    pub fn parse(name: &str) -> Option<KeepReason> {
        KeepReason::ALL.into_iter().find(|r| r.as_str() == name)
    }
}

/// A tag the rules keep, with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptTag<'a> {
    pub name: &'a str,
    pub digest: &'a str,
    pub reason: KeepReason,
    /// For `attachment_of`, the manifest its manifest is attached to.
    pub subject: Option<&'a str>,
}

/// A manifest the rules keep, with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptManifest<'a> {
    pub digest: &'a str,
    pub reason: KeepReason,
    /// For `attachment_of`, the kept manifest it is attached to.
    pub subject: Option<&'a str>,
}

/// What the rules keep of one image (see [`explain`]): tags by name, manifests by digest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Kept<'a> {
    pub tags: Vec<KeptTag<'a>>,
    pub manifests: Vec<KeptManifest<'a>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedTag<'a> {
    pub name: &'a str,
    pub digest: &'a str,
    pub pushed_version: i64,
    pub reason: Reason,
    /// For `attachment_of`, the manifest it is attached to.
    pub subject: Option<&'a str>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedManifest<'a> {
    pub digest: &'a str,
    pub reason: Reason,
    /// Bytes of blobs only this deletion frees.
    pub bytes: i64,
    /// For `attachment_of`, the manifest it is attached to.
    pub subject: Option<&'a str>,
}

/// What the rules delete from one image, tags by name and manifests by digest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImagePlan<'a> {
    pub tags: Vec<PlannedTag<'a>>,
    pub manifests: Vec<PlannedManifest<'a>>,
}

impl ImagePlan<'_> {
    pub fn deletions(&self) -> usize {
        self.tags.len() + self.manifests.len()
    }

    pub fn bytes(&self) -> i64 {
        self.manifests.iter().map(|m| m.bytes).sum()
    }
}

/// The digest hex a tag name of cosign's scheme (`sha256-<hex>.sig`, `.att`, `.sbom`) or of
/// the OCI 1.1 referrers tag schema (`sha256-<hex>`) names, for 64 lowercase hex digits;
/// `None` for any other name, which is an ordinary tag (design §11).
pub fn scheme_hex(name: &str) -> Option<&str> {
    let rest = name.strip_prefix("sha256-")?;
    let (hex, suffix) = rest.split_at_checked(64)?;
    let hex_ok = hex
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    (hex_ok && matches!(suffix, "" | ".sig" | ".att" | ".sbom")).then_some(hex)
}

/// The digest a tag of one of the attachment schemes names (see [`scheme_hex`]).
pub fn scheme_subject(name: &str) -> Option<String> {
    scheme_hex(name).map(|hex| format!("sha256:{hex}"))
}

/// The manifest an attachment belongs to, how it says so, and whether the image has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedTo {
    pub digest: String,
    /// `subject` (its OCI 1.1 field), `cosign_tag` (`sha256-<hex>.sig|.att|.sbom`) or
    /// `referrers_tag` (`sha256-<hex>`).
    pub by: &'static str,
    /// The image has no such manifest: the attachment is an orphan, which the `untagged`
    /// rule deletes.
    pub orphan: bool,
}

/// The digests manifest a names as what it is attached to, in the order [`attached_to`]
/// tries them: its `subject`, then each of its `tags` of a scheme (with how).
pub fn named_subjects(subject: Option<&str>, tags: &[String]) -> Vec<(String, &'static str)> {
    let by_tags = tags.iter().filter_map(|t| {
        // `sha256-` and 64 hex digits, without a suffix, is the referrers tag schema's.
        let by = if t.len() == 71 {
            "referrers_tag"
        } else {
            "cosign_tag"
        };
        scheme_subject(t).map(|s| (s, by))
    });
    subject
        .map(|s| (s.to_owned(), "subject"))
        .into_iter()
        .chain(by_tags)
        .collect()
}

/// What manifest `digest`, with `subject` and `tags`, is attached to, by the rules selection
/// follows ([`Relations`], one manifest at a time): the first digest it names that is another
/// manifest of the image (`has`); else an orphan when its `subject` names none, or when only
/// scheme tags name it; else nothing.
pub fn attached_to(
    digest: &str,
    subject: Option<&str>,
    tags: &[String],
    has: impl Fn(&str) -> bool,
) -> Option<AttachedTo> {
    let named = named_subjects(subject, tags);
    if let Some((s, by)) = named.iter().find(|(s, _)| s != digest && has(s)) {
        return Some(AttachedTo {
            digest: s.clone(),
            by,
            orphan: false,
        });
    }
    let only_scheme_tags = !tags.is_empty() && tags.iter().all(|t| scheme_hex(t).is_some());
    let (s, by) = named.into_iter().next()?;
    (subject.is_some() || only_scheme_tags).then_some(AttachedTo {
        digest: s,
        by,
        orphan: true,
    })
}

/// Edges from manifests to manifests (by their index in the image), grouped by where they
/// start, each group in the order the edges were found and without repeats.
struct Edges {
    start: Vec<usize>,
    to: Vec<usize>,
}

impl Edges {
    fn new(n: usize, mut pairs: Vec<(usize, usize)>) -> Edges {
        // Stable: each group keeps the order its edges were found in.
        pairs.sort_by_key(|&(from, _)| from);
        let mut start = vec![0; n + 1];
        let mut to = Vec::with_capacity(pairs.len());
        let mut group = 0;
        let mut last = None;
        for (from, target) in pairs {
            if last != Some(from) {
                group = to.len();
                last = Some(from);
            }
            if !to[group..].contains(&target) {
                to.push(target);
                start[from + 1] += 1;
            }
        }
        for i in 0..n {
            start[i + 1] += start[i];
        }
        Edges { start, to }
    }

    fn of(&self, from: usize) -> &[usize] {
        &self.to[self.start[from]..self.start[from + 1]]
    }

    fn any(&self, from: usize) -> bool {
        self.start[from] < self.start[from + 1]
    }
}

/// How one image's manifests hang together (design §11): which manifests each is attached
/// to, which indexes list it, and the orphans (attached to a digest the image lacks).
/// Manifests are named by their index in the image, so that selection hashes each digest
/// once, here, rather than at every step.
struct Relations {
    /// Per tag (in the image's order): the index of the manifest it points at.
    tag_manifest: Vec<Option<usize>>,
    /// Per tag: the manifest its name attaches its manifest to, when its name is of a scheme
    /// and that digest is another manifest of the image.
    tag_subject: Vec<Option<usize>>,
    /// Per tag: of a scheme, naming a digest the image lacks.
    orphan_tag: Vec<bool>,
    /// Per attachment, the manifests it is attached to (by `subject` or by a scheme tag).
    subjects: Edges,
    /// Per manifest, what it goes with: the indexes listing it and what it is attached to.
    owners: Edges,
    /// The reverse of `owners`: per manifest, the manifests that go with it.
    dependents: Edges,
    /// Per manifest: an attachment whose subject is not in the image (by `subject`, or
    /// tagged only by orphan scheme tags).
    orphan: Vec<bool>,
    /// Per manifest: some tag points at it.
    tagged: Vec<bool>,
}

impl Relations {
    fn of(image: &ImageState<'_>) -> Self {
        let n = image.manifests.len();
        let at: HashMap<&str, usize> = image
            .manifests
            .iter()
            .enumerate()
            .map(|(i, m)| (m.digest, i))
            .collect();
        let mut attached: Vec<(usize, usize)> = Vec::new();
        let mut orphan = vec![false; n];
        for (i, m) in image.manifests.iter().enumerate() {
            match m.subject.map(|s| (s, at.get(s))) {
                Some((s, Some(&j))) if s != m.digest => attached.push((i, j)),
                Some(_) => orphan[i] = true,
                None => {}
            }
        }
        let mut named = String::with_capacity(71);
        let tags = image.tags.len();
        let mut tag_manifest = Vec::with_capacity(tags);
        let mut tag_subject = Vec::with_capacity(tags);
        let mut orphan_tag = vec![false; tags];
        let mut tagged = vec![false; n];
        for (k, t) in image.tags.iter().enumerate() {
            let own = at.get(t.digest).copied();
            tag_manifest.push(own);
            let Some(hex) = scheme_hex(t.name) else {
                tag_subject.push(None);
                continue;
            };
            named.clear();
            named.push_str("sha256:");
            named.push_str(hex);
            match (at.get(named.as_str()), own) {
                (Some(&s), Some(own)) if s != own => {
                    attached.push((own, s));
                    tag_subject.push(Some(s));
                }
                _ => {
                    orphan_tag[k] = true;
                    tag_subject.push(None);
                }
            }
        }
        // A manifest tagged only by orphan scheme tags is an orphan attachment; one any
        // other tag names is not.
        let mut ordinary_tagged = vec![false; n];
        for (k, own) in tag_manifest.iter().enumerate() {
            if let Some(own) = *own {
                tagged[own] = true;
                ordinary_tagged[own] |= !orphan_tag[k];
            }
        }
        for (k, own) in tag_manifest.iter().enumerate() {
            if let (true, Some(own)) = (orphan_tag[k], *own)
                && !ordinary_tagged[own]
            {
                orphan[own] = true;
            }
        }
        let subjects = Edges::new(n, attached);
        for (i, o) in orphan.iter_mut().enumerate() {
            *o &= !subjects.any(i);
        }

        let mut owned: Vec<(usize, usize)> = Vec::new();
        for (i, m) in image.manifests.iter().enumerate() {
            for c in &m.children {
                if let Some(&c) = at.get(c) {
                    owned.push((c, i));
                }
            }
        }
        for a in 0..n {
            owned.extend(subjects.of(a).iter().map(|&s| (a, s)));
        }
        let dependents = Edges::new(n, owned.iter().map(|&(c, o)| (o, c)).collect());
        let owners = Edges::new(n, owned);
        Relations {
            tag_manifest,
            tag_subject,
            orphan_tag,
            subjects,
            owners,
            dependents,
            orphan,
            tagged,
        }
    }

    /// Whether manifest `m` is an attachment.
    fn attachment(&self, m: usize) -> bool {
        self.subjects.any(m)
    }

    /// The first manifest `m` is attached to, if it is an attachment.
    fn subject(&self, m: usize) -> Option<usize> {
        self.subjects.of(m).first().copied()
    }

    /// Whether tag `k` belongs to an attachment: no candidate, it goes with its subject.
    fn attachment_tag(&self, k: usize) -> bool {
        self.tag_subject[k].is_some() || self.tag_manifest[k].is_some_and(|m| self.attachment(m))
    }
}

/// Selects what `rules` delete from `image` at time `now`.
pub fn select<'a>(rules: &Rules, image: &ImageState<'a>, now: DateTime<Utc>) -> ImagePlan<'a> {
    choose(rules, image, now, false).0
}

/// [`select`], and what the rules keep of the image, each item with the rule that kept it:
/// every tag and manifest of the image is in exactly one of the two.
pub fn explain<'a>(
    rules: &Rules,
    image: &ImageState<'a>,
    now: DateTime<Utc>,
) -> (ImagePlan<'a>, Kept<'a>) {
    choose(rules, image, now, true)
}

fn choose<'a>(
    rules: &Rules,
    image: &ImageState<'a>,
    now: DateTime<Utc>,
    keeps: bool,
) -> (ImagePlan<'a>, Kept<'a>) {
    let cutoff = rules.older_than.map(|d| now - d);
    let old = |at: DateTime<Utc>| cutoff.is_none_or(|c| at < c);
    let rel = Relations::of(image);
    let digest = |m: usize| image.manifests[m].digest;
    // 1–3: tags. A tag of an attachment is no candidate: it goes with what it belongs to.
    let mut candidates: Vec<usize> = (0..image.tags.len())
        .filter(|&k| !rel.attachment_tag(k) && !rel.orphan_tag[k])
        .filter(|&k| rules.tag_pattern.is_match(image.tags[k].name))
        .filter(|&k| {
            !rules
                .keep_tag_pattern
                .as_ref()
                .is_some_and(|p| p.is_match(image.tags[k].name))
        })
        .collect();
    candidates.sort_by(|&a, &b| {
        let (a, b) = (&image.tags[a], &image.tags[b]);
        (b.pushed_at, b.pushed_version)
            .cmp(&(a.pushed_at, a.pushed_version))
            .then_with(|| a.name.cmp(b.name))
    });
    let reason = match (rules.older_than, rules.keep_last) {
        (Some(_), _) => Reason::OlderThan,
        (None, 0) => Reason::TagPattern,
        (None, _) => Reason::KeepLast,
    };
    let planned = |k: usize, reason, subject: Option<usize>| {
        let t = &image.tags[k];
        PlannedTag {
            name: t.name,
            digest: t.digest,
            pushed_version: t.pushed_version,
            reason,
            subject: subject.map(digest),
        }
    };
    // The candidates `keep_last` spares, when the keeps are wanted.
    let mut last_kept = vec![false; if keeps { image.tags.len() } else { 0 }];
    if keeps {
        for &k in candidates.iter().take(rules.keep_last) {
            last_kept[k] = true;
        }
    }
    let mut deleted_tag = vec![false; image.tags.len()];
    let mut tags: Vec<PlannedTag> = Vec::new();
    for &k in candidates.iter().skip(rules.keep_last) {
        if old(image.tags[k].pushed_at) {
            deleted_tag[k] = true;
            tags.push(planned(k, reason, None));
        }
    }
    // Orphan scheme tags go by the untagged rule.
    if rules.untagged {
        for (k, t) in image.tags.iter().enumerate() {
            if rel.orphan_tag[k] && old(t.pushed_at) {
                deleted_tag[k] = true;
                tags.push(planned(k, Reason::OrphanAttachment, None));
            }
        }
    }

    // 4–5: manifests. Kept: what a remaining tag of its own points at, with its children
    // and attachments at any depth.
    let n = image.manifests.len();
    let mut protected = vec![false; n];
    let mut stack: Vec<usize> = (0..image.tags.len())
        .filter(|&k| !deleted_tag[k] && !rel.attachment_tag(k))
        .filter_map(|k| rel.tag_manifest[k])
        .collect();
    while let Some(m) = stack.pop() {
        if !protected[m] {
            protected[m] = true;
            stack.extend(rel.dependents.of(m));
        }
    }
    // What nothing else owns: by its tags, or by the untagged rule.
    let mut deleted: Vec<Option<Reason>> = vec![None; n];
    let mut freed: Vec<usize> = Vec::new();
    for (i, m) in image.manifests.iter().enumerate() {
        if protected[i] || rel.owners.any(i) {
            continue;
        }
        let reason = if rel.tagged[i] {
            // Not protected, so every tag pointing here is deleted.
            Some(Reason::TagsDeleted)
        } else if rules.untagged && old(m.recorded_at) {
            Some(Reason::Untagged)
        } else {
            None
        };
        if let Some(reason) = reason {
            deleted[i] = Some(match rel.orphan[i] {
                true => Reason::OrphanAttachment,
                false => reason,
            });
            freed.push(i);
        }
    }
    // What goes with them: an index's children no remaining index lists, and attachments
    // whose subjects all go (nested indexes and attachments of attachments included).
    while let Some(owner) = freed.pop() {
        for &c in rel.dependents.of(owner) {
            if deleted[c].is_some()
                || protected[c]
                || !rel.owners.of(c).iter().all(|&o| deleted[o].is_some())
            {
                continue;
            }
            deleted[c] = Some(if rel.attachment(c) {
                Reason::AttachmentOf
            } else if rel.orphan[c] {
                Reason::OrphanAttachment
            } else if rel.tagged[c] {
                Reason::TagsDeleted
            } else {
                Reason::ChildOfDeleted
            });
            freed.push(c);
        }
    }
    // The tags of deleted attachments go with them.
    for (k, own) in rel.tag_manifest.iter().enumerate() {
        let Some(m) = *own else {
            continue;
        };
        if deleted[m] == Some(Reason::AttachmentOf) && !deleted_tag[k] {
            deleted_tag[k] = true;
            let subject = rel.tag_subject[k].or_else(|| rel.subject(m));
            tags.push(planned(k, Reason::AttachmentOf, subject));
        }
    }
    tags.sort_by(|a, b| a.name.cmp(b.name));

    let kept = match keeps {
        true => kept(rules, image, &rel, &deleted_tag, &deleted, &last_kept),
        false => Kept::default(),
    };

    // Bytes: blobs no remaining manifest holds, each once.
    let remaining: HashSet<&str> = image
        .manifests
        .iter()
        .zip(&deleted)
        .filter(|(_, d)| d.is_none())
        .flat_map(|(m, _)| m.blobs.iter().map(|(d, _)| *d))
        .collect();
    let mut counted: HashSet<&str> = HashSet::new();
    let mut gone: Vec<(usize, Reason)> = deleted
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.map(|r| (i, r)))
        .collect();
    gone.sort_unstable_by_key(|&(i, _)| digest(i));
    let manifests = gone
        .into_iter()
        .map(|(i, reason)| {
            let bytes = image.manifests[i]
                .blobs
                .iter()
                .filter(|(d, _)| !remaining.contains(d) && counted.insert(d))
                .map(|(_, size)| size)
                .sum();
            PlannedManifest {
                digest: digest(i),
                reason,
                bytes,
                subject: (reason == Reason::AttachmentOf)
                    .then(|| rel.subject(i).map(digest))
                    .flatten(),
            }
        })
        .collect();
    (ImagePlan { tags, manifests }, kept)
}

/// Why each tag and manifest that selection did not delete stays.
fn kept<'a>(
    rules: &Rules,
    image: &ImageState<'a>,
    rel: &Relations,
    deleted_tag: &[bool],
    deleted: &[Option<Reason>],
    last_kept: &[bool],
) -> Kept<'a> {
    let digest = |m: usize| image.manifests[m].digest;
    let unowned = |rule_untagged: bool| match rule_untagged {
        true => KeepReason::NewerThan,
        false => KeepReason::UntaggedNotSet,
    };
    let mut out = Kept::default();
    let mut by_kept_tag = vec![false; image.manifests.len()];
    for (k, t) in image.tags.iter().enumerate() {
        if deleted_tag[k] {
            continue;
        }
        let subject =
            rel.tag_subject[k].or_else(|| rel.tag_manifest[k].and_then(|m| rel.subject(m)));
        let reason = if subject.is_some() {
            KeepReason::AttachmentOf
        } else if rel.orphan_tag[k] {
            unowned(rules.untagged)
        } else if !rules.tag_pattern.is_match(t.name) {
            KeepReason::NotMatched
        } else if rules
            .keep_tag_pattern
            .as_ref()
            .is_some_and(|p| p.is_match(t.name))
        {
            KeepReason::KeepTagPattern
        } else if last_kept[k] {
            KeepReason::KeepLast
        } else {
            KeepReason::NewerThan
        };
        if let (None, Some(m)) = (subject, rel.tag_manifest[k]) {
            by_kept_tag[m] = true;
        }
        out.tags.push(KeptTag {
            name: t.name,
            digest: t.digest,
            reason,
            subject: subject.map(digest),
        });
    }
    out.tags.sort_by(|a, b| a.name.cmp(b.name));
    for (i, m) in image.manifests.iter().enumerate() {
        if deleted[i].is_some() {
            continue;
        }
        let subjects = rel.subjects.of(i);
        // Attached to what remains (the first remaining subject, else the first).
        let subject = subjects
            .iter()
            .copied()
            .find(|&s| deleted[s].is_none())
            .or(subjects.first().copied());
        let reason = if subject.is_some() {
            KeepReason::AttachmentOf
        } else if by_kept_tag[i] {
            KeepReason::KeptTag
        } else if rel.owners.any(i) {
            KeepReason::ChildOfKept
        } else {
            unowned(rules.untagged)
        };
        out.manifests.push(KeptManifest {
            digest: m.digest,
            reason,
            subject: subject.map(digest),
        });
    }
    out.manifests.sort_unstable_by_key(|m| m.digest);
    out
}

/// The run's guard: more deletions planned than `max_deletions` stops the run before it
/// deletes anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the plan deletes {planned} items, more than max_deletions ({max}); nothing was deleted")]
pub struct GuardExceeded {
    pub planned: usize,
    pub max: usize,
}

/// Checks the deletions a run planned (over all its images) against `max_deletions`.
pub fn check_guard(planned: usize, max_deletions: usize) -> Result<usize, GuardExceeded> {
    if planned > max_deletions {
        return Err(GuardExceeded {
            planned,
            max: max_deletions,
        });
    }
    Ok(planned)
}

#[cfg(test)]
mod tests;

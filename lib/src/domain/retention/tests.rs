//! Selection, given an image, when a policy's rules run, then exactly these go. One test per
//! rule and per hazard; no database.

use chrono::{DateTime, Duration, TimeZone, Utc};

use super::*;

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0).unwrap()
}

fn days_ago(d: i64) -> DateTime<Utc> {
    now() - Duration::days(d)
}

/// An image built tag by tag and manifest by manifest.
#[derive(Default)]
struct Given(ImageState<'static>);

impl Given {
    /// An image manifest holding `blobs` (`(name, size)`), recorded `age` days ago.
    fn manifest(mut self, digest: &'static str, age: i64, blobs: &[(&'static str, i64)]) -> Self {
        self.0.manifests.push(ManifestState {
            digest,
            recorded_at: days_ago(age),
            subject: None,
            children: vec![],
            blobs: blobs.to_vec(),
        });
        self
    }

    /// An index listing `children`, recorded `age` days ago.
    fn index(mut self, digest: &'static str, age: i64, children: &[&'static str]) -> Self {
        self.0.manifests.push(ManifestState {
            digest,
            recorded_at: days_ago(age),
            subject: None,
            children: children.to_vec(),
            blobs: vec![],
        });
        self
    }

    /// Tag `name` on `digest`, (last) pushed `age` days ago.
    fn tag(mut self, name: &'static str, digest: &'static str, age: i64) -> Self {
        let version = self.0.tags.len() as i64 + 100;
        self.0.tags.push(TagState {
            name,
            digest,
            pushed_at: days_ago(age),
            pushed_version: version,
        });
        self
    }

    fn when(&self, rules: RulesSpec) -> ImagePlan<'static> {
        let rules = Rules::compile(&rules).expect("valid rules");
        select(&rules, &self.0, now())
    }
}

fn rules(json: serde_json::Value) -> RulesSpec {
    serde_json::from_value(json).expect("a rules object")
}

fn tags<'a>(plan: &ImagePlan<'a>) -> Vec<&'a str> {
    plan.tags.iter().map(|t| t.name).collect()
}

fn manifests<'a>(plan: &ImagePlan<'a>) -> Vec<&'a str> {
    plan.manifests.iter().map(|m| m.digest).collect()
}

/// Five tags on five manifests, `v1` the oldest (50 days) to `v5` the newest (10 days).
fn five_versions() -> Given {
    let mut g = Given::default();
    let names = [
        ("m1", "layer1", "v1"),
        ("m2", "layer2", "v2"),
        ("m3", "layer3", "v3"),
        ("m4", "layer4", "v4"),
        ("m5", "layer5", "v5"),
    ];
    for (i, (m, layer, tag)) in (1..).zip(names) {
        let age = 60 - 10 * i;
        g = g.manifest(m, age, &[(layer, 10 * i)]).tag(tag, m, age);
    }
    g
}

#[test]
fn tag_pattern_alone_deletes_every_matching_tag_and_only_those() {
    let given = five_versions()
        .manifest("mx", 90, &[("lx", 1)])
        .tag("latest", "mx", 90);
    let plan = given.when(rules(serde_json::json!({"tag_pattern": "^v"})));
    assert_eq!(tags(&plan), ["v1", "v2", "v3", "v4", "v5"]);
    assert!(plan.tags.iter().all(|t| t.reason == Reason::TagPattern));
    assert_eq!(manifests(&plan), ["m1", "m2", "m3", "m4", "m5"]);
}

#[test]
fn keep_tag_pattern_spares_matching_tags() {
    let plan = five_versions().when(rules(serde_json::json!({
        "tag_pattern": ".*", "keep_tag_pattern": "^v(2|4)$"
    })));
    assert_eq!(tags(&plan), ["v1", "v3", "v5"]);
    assert_eq!(manifests(&plan), ["m1", "m3", "m5"]);
}

#[test]
fn keep_last_keeps_the_most_recently_pushed_candidates() {
    let plan = five_versions().when(rules(serde_json::json!({"keep_last": 2})));
    assert_eq!(tags(&plan), ["v1", "v2", "v3"]);
    assert!(plan.tags.iter().all(|t| t.reason == Reason::KeepLast));
}

#[test]
fn keep_last_larger_than_the_candidates_deletes_nothing() {
    let plan = five_versions().when(rules(serde_json::json!({"keep_last": 50})));
    assert_eq!(plan, ImagePlan::default());
}

#[test]
fn older_than_spares_recent_tags_beyond_keep_last() {
    // v1 50 days, v2 40, v3 30, v4 20, v5 10: keep v5, then only those older than 35 days.
    let plan = five_versions().when(rules(serde_json::json!({
        "keep_last": 1, "older_than": "35d"
    })));
    assert_eq!(tags(&plan), ["v1", "v2"]);
    assert!(plan.tags.iter().all(|t| t.reason == Reason::OlderThan));
}

#[test]
fn a_tag_moved_recently_counts_as_recent_and_its_old_manifest_is_only_untagged() {
    // `stable` pointed at m-old 100 days ago and was moved to m-new yesterday.
    let given = Given::default()
        .manifest("m-old", 100, &[("a", 5)])
        .manifest("m-new", 1, &[("b", 7)])
        .tag("stable", "m-new", 1)
        .tag("old", "m-old", 100);
    let plan = given.when(rules(serde_json::json!({
        "tag_pattern": "^(stable|old)$", "keep_last": 1, "older_than": "30d"
    })));
    assert_eq!(tags(&plan), ["old"], "the moved tag is the most recent");
    assert_eq!(manifests(&plan), ["m-old"]);

    // With no tag left on m-old, only the untagged rule removes it.
    let given = Given::default()
        .manifest("m-old", 100, &[("a", 5)])
        .manifest("m-new", 1, &[("b", 7)])
        .tag("stable", "m-new", 1);
    let keep = rules(serde_json::json!({"older_than": "30d"}));
    assert_eq!(given.when(keep), ImagePlan::default());
    let plan = given.when(rules(
        serde_json::json!({"older_than": "30d", "untagged": true}),
    ));
    assert_eq!(manifests(&plan), ["m-old"]);
    assert_eq!(plan.manifests[0].reason, Reason::Untagged);
}

#[test]
fn a_manifest_shared_with_a_kept_tag_survives_its_deleted_tag() {
    let given = Given::default()
        .manifest("m", 40, &[("a", 5)])
        .tag("build-17", "m", 40)
        .tag("release", "m", 40);
    let plan = given.when(rules(serde_json::json!({"tag_pattern": "^build-"})));
    assert_eq!(tags(&plan), ["build-17"]);
    assert!(plan.manifests.is_empty(), "release still points at m");
    assert_eq!(plan.bytes(), 0);
}

#[test]
fn the_children_of_a_kept_index_are_never_deleted() {
    let given = Given::default()
        .manifest("amd64", 90, &[("la", 10)])
        .manifest("arm64", 90, &[("lb", 20)])
        .index("idx", 90, &["amd64", "arm64"])
        .tag("latest", "idx", 90);
    // Untagged children of a kept index are not "untagged" manifests.
    let plan = given.when(rules(serde_json::json!({
        "tag_pattern": "^nothing$", "untagged": true
    })));
    assert_eq!(plan, ImagePlan::default());
}

#[test]
fn a_deleted_index_takes_its_children_except_those_another_kept_index_lists() {
    let given = Given::default()
        .manifest("amd64", 90, &[("base", 100), ("la", 10)])
        .manifest("arm64", 90, &[("base", 100), ("lb", 20)])
        .manifest("amd64-v2", 5, &[("base", 100), ("lc", 30)])
        .index("idx-v1", 90, &["amd64", "arm64"])
        .index("idx-v2", 5, &["amd64-v2", "arm64"])
        .tag("v1", "idx-v1", 90)
        .tag("v2", "idx-v2", 5);
    let plan = given.when(rules(serde_json::json!({"keep_last": 1})));
    assert_eq!(tags(&plan), ["v1"]);
    assert_eq!(
        manifests(&plan),
        ["amd64", "idx-v1"],
        "arm64 is still listed by idx-v2"
    );
    let reasons: Vec<Reason> = plan.manifests.iter().map(|m| m.reason).collect();
    assert_eq!(reasons, [Reason::ChildOfDeleted, Reason::TagsDeleted]);
    // Only `la` is freed: `base` and `lb` are still held by amd64-v2 and arm64.
    assert_eq!(plan.bytes(), 10);
}

#[test]
fn a_tagged_child_of_an_index_that_stays_is_kept_though_its_tag_goes() {
    let given = Given::default()
        .manifest("amd64", 90, &[("la", 10)])
        .index("idx", 90, &["amd64"])
        .tag("latest", "idx", 90)
        .tag("amd64-only", "amd64", 90);
    let plan = given.when(rules(serde_json::json!({"tag_pattern": "-only$"})));
    assert_eq!(tags(&plan), ["amd64-only"]);
    assert!(plan.manifests.is_empty());
}

#[test]
fn untagged_manifests_go_only_with_the_rule_and_only_when_old_enough() {
    let given = Given::default()
        .manifest("kept", 1, &[("a", 1)])
        .tag("latest", "kept", 1)
        .manifest("dangling-old", 60, &[("b", 2)])
        .manifest("dangling-new", 2, &[("c", 3)]);
    assert_eq!(
        given.when(rules(serde_json::json!({"older_than": "7d"}))),
        ImagePlan::default()
    );
    let plan = given.when(rules(
        serde_json::json!({"older_than": "7d", "untagged": true}),
    ));
    assert_eq!(tags(&plan), Vec::<&str>::new());
    assert_eq!(manifests(&plan), ["dangling-old"]);
    assert_eq!(plan.bytes(), 2);
}

#[test]
fn an_empty_tag_pattern_matches_every_tag_and_an_empty_keep_pattern_keeps_every_tag() {
    let all = five_versions().when(rules(serde_json::json!({"tag_pattern": ""})));
    assert_eq!(all.tags.len(), 5);
    let none = five_versions().when(rules(serde_json::json!({
        "tag_pattern": "", "keep_tag_pattern": ""
    })));
    assert_eq!(none, ImagePlan::default());
}

#[test]
fn bytes_count_each_freed_blob_once() {
    // m1 and m2 share `base`; both go; `base` is freed once.
    let given = Given::default()
        .manifest("m1", 50, &[("base", 100), ("l1", 1)])
        .manifest("m2", 50, &[("base", 100), ("l2", 2)])
        .manifest("m3", 1, &[("l3", 3)])
        .tag("a", "m1", 50)
        .tag("b", "m2", 50)
        .tag("c", "m3", 1);
    let plan = given.when(rules(serde_json::json!({"keep_last": 1})));
    assert_eq!(manifests(&plan), ["m1", "m2"]);
    assert_eq!(plan.bytes(), 103);
}

#[test]
fn max_deletions_exceeded_stops_the_run() {
    let plan = five_versions().when(rules(serde_json::json!({"keep_last": 1})));
    assert_eq!(plan.deletions(), 8, "four tags and their four manifests");
    assert_eq!(check_guard(plan.deletions(), 8), Ok(8));
    assert_eq!(
        check_guard(plan.deletions() * 2, 10),
        Err(GuardExceeded {
            planned: 16,
            max: 10
        })
    );
}

#[test]
fn bad_rules_name_their_field() {
    let field = |json| match Rules::compile(&rules(json)) {
        Err(DomainError::Invalid { field, .. }) => field,
        other => panic!("expected a refusal, got {other:?}"),
    };
    assert_eq!(
        field(serde_json::json!({"tag_pattern": "("})),
        "rules.tag_pattern"
    );
    assert_eq!(
        field(serde_json::json!({"keep_tag_pattern": "x".repeat(MAX_PATTERN_LEN + 1)})),
        "rules.keep_tag_pattern"
    );
    // A pattern whose compiled form would be huge is refused, not built.
    assert_eq!(
        field(serde_json::json!({"tag_pattern": "\\w{1000}{1000}"})),
        "rules.tag_pattern"
    );
    assert_eq!(
        field(serde_json::json!({"older_than": "30 days"})),
        "rules.older_than"
    );
    assert_eq!(
        field(serde_json::json!({"older_than": "99999999w"})),
        "rules.older_than"
    );
}

#[test]
fn durations_read_their_unit() {
    assert_eq!(parse_duration("90s"), Ok(Duration::seconds(90)));
    assert_eq!(parse_duration("15m"), Ok(Duration::minutes(15)));
    assert_eq!(parse_duration("12h"), Ok(Duration::hours(12)));
    assert_eq!(parse_duration("30d"), Ok(Duration::days(30)));
    assert_eq!(parse_duration("2w"), Ok(Duration::weeks(2)));
    assert!(parse_duration("d").is_err());
    assert!(parse_duration("-3d").is_err());
    assert!(parse_duration("3").is_err());
}

#[test]
fn a_child_also_listed_by_an_untagged_index_that_stays_is_kept() {
    // idx-old goes with its tag; idx-loose has no tag but the untagged rule is off, so it
    // stays, and so does `shared`, which it lists.
    let given = Given::default()
        .manifest("shared", 90, &[("s", 10)])
        .manifest("own", 90, &[("o", 20)])
        .index("idx-old", 90, &["shared", "own"])
        .index("idx-loose", 90, &["shared"])
        .tag("old", "idx-old", 90);
    let plan = given.when(rules(serde_json::json!({"tag_pattern": "^old$"})));
    assert_eq!(manifests(&plan), ["idx-old", "own"]);
    assert_eq!(plan.bytes(), 20);
}

#[test]
fn a_reason_is_stored_under_its_serde_name_and_read_back() {
    for reason in Reason::ALL {
        assert_eq!(serde_json::json!(reason), reason.as_str());
        assert_eq!(Reason::parse(reason.as_str()), Some(reason));
    }
    assert_eq!(Reason::parse("keep-last"), None);
}

// Attachments (design §11). The tag schemes name real digests, so these images use them.

/// A sha256 digest of 64 `c`s, and the tag names of both schemes for it.
fn sha(c: char) -> &'static str {
    Box::leak(format!("sha256:{}", c.to_string().repeat(64)).into_boxed_str())
}

fn scheme_tag(subject: &str, suffix: &str) -> &'static str {
    let hex = subject.strip_prefix("sha256:").unwrap();
    Box::leak(format!("sha256-{hex}{suffix}").into_boxed_str())
}

impl Given {
    /// An artifact attached by its `subject` field, untagged, recorded `age` days ago.
    fn attached(
        mut self,
        digest: &'static str,
        subject: &'static str,
        age: i64,
        bytes: i64,
    ) -> Self {
        let blob = Box::leak(format!("blob-of-{digest}").into_boxed_str());
        self.0.manifests.push(ManifestState {
            digest,
            recorded_at: days_ago(age),
            subject: Some(subject),
            children: vec![],
            blobs: vec![(blob, bytes)],
        });
        self
    }

    /// A cosign signature of `subject`: manifest `digest` tagged `sha256-<hex>.sig`.
    fn signed(self, subject: &'static str, digest: &'static str, age: i64) -> Self {
        let blob = Box::leak(format!("sig-of-{subject}").into_boxed_str());
        self.manifest(digest, age, &[(blob, 1)])
            .tag(scheme_tag(subject, ".sig"), digest, age)
    }
}

/// Release tags v8, v9, v10, built 9, 6 and 3 months ago (pushed in that order of age),
/// each signed in cosign's scheme a day ago; v10 carries an SBOM by `subject`, listed by a
/// referrers-schema index tagged `sha256-<v10 hex>`.
fn signed_releases() -> Given {
    let (v8, v9, v10) = (sha('8'), sha('9'), sha('a'));
    Given::default()
        .manifest(v8, 270, &[("l8", 800)])
        .tag("v8", v8, 270)
        .manifest(v9, 180, &[("l9", 900)])
        .tag("v9", v9, 180)
        .manifest(v10, 90, &[("l10", 1000)])
        .tag("v10", v10, 90)
        .signed(v8, sha('b'), 1)
        .signed(v9, sha('c'), 1)
        .signed(v10, sha('d'), 1)
        .attached(sha('e'), v10, 1, 50)
        .index(sha('f'), 1, &[sha('e')])
        .tag(scheme_tag(v10, ""), sha('f'), 1)
}

#[test]
fn attachments_are_no_candidates_and_go_with_their_subject() {
    let (v8, v9) = (sha('8'), sha('9'));
    let expected_tags = ["v8", "v9", scheme_tag(v8, ".sig"), scheme_tag(v9, ".sig")];
    let mut expected_tags = expected_tags.to_vec();
    expected_tags.sort();
    for spec in [
        serde_json::json!({"tag_pattern": ".*", "keep_last": 1, "untagged": true}),
        serde_json::json!({"tag_pattern": "^v", "keep_last": 1}),
    ] {
        let plan = signed_releases().when(rules(spec.clone()));
        // The signatures, pushed last, would be "the last 1" if they counted.
        assert_eq!(tags(&plan), expected_tags, "{spec}");
        assert_eq!(manifests(&plan), [v8, v9, sha('b'), sha('c')], "{spec}");
        for t in &plan.tags {
            match t.name {
                "v8" | "v9" => assert_eq!((t.reason, t.subject), (Reason::KeepLast, None)),
                sig => {
                    let subject = if sig.contains("88") { v8 } else { v9 };
                    assert_eq!((t.reason, t.subject), (Reason::AttachmentOf, Some(subject)));
                }
            }
        }
        let sig8 = plan
            .manifests
            .iter()
            .find(|m| m.digest == sha('b'))
            .unwrap();
        assert_eq!(
            (sig8.reason, sig8.subject),
            (Reason::AttachmentOf, Some(v8))
        );
        // Bytes freed count the signatures' blobs.
        assert_eq!(plan.bytes(), 800 + 900 + 1 + 1);
    }
}

#[test]
fn deleting_a_subject_takes_attachments_at_any_depth() {
    let v10 = sha('a');
    // A signature of the SBOM, and an attestation of that signature.
    let given = signed_releases()
        .signed(sha('e'), sha('1'), 1)
        .attached(sha('2'), sha('1'), 1, 7);
    let plan = given.when(rules(serde_json::json!({"tag_pattern": "^v10$"})));
    assert_eq!(
        tags(&plan)[..],
        [
            scheme_tag(v10, ""),
            scheme_tag(v10, ".sig"),
            scheme_tag(sha('e'), ".sig"),
            "v10"
        ]
    );
    let mut expected = vec![v10, sha('d'), sha('e'), sha('f'), sha('1'), sha('2')];
    expected.sort();
    assert_eq!(manifests(&plan), expected);
    let subject_of = |d: &str| {
        plan.manifests
            .iter()
            .find(|m| m.digest == d)
            .unwrap()
            .subject
    };
    assert_eq!(subject_of(sha('e')), Some(v10));
    assert_eq!(subject_of(sha('1')), Some(sha('e')));
    assert_eq!(subject_of(sha('2')), Some(sha('1')));
    assert_eq!(
        subject_of(sha('f')),
        Some(v10),
        "the referrers index goes as v10's"
    );
    assert_eq!(plan.bytes(), 1000 + 1 + 50 + 1 + 7);
}

#[test]
fn untagged_never_takes_an_attachment_whose_subject_remains() {
    // An untagged subject that stays (untagged without older_than would take it, so the
    // rule is off) keeps its SBOM; a kept release keeps its untagged SBOM under `untagged`.
    let plan = signed_releases().when(rules(
        serde_json::json!({"tag_pattern": "^nothing$", "untagged": true}),
    ));
    assert_eq!(plan.deletions(), 0, "{plan:?}");
    let given = Given::default()
        .manifest(sha('1'), 90, &[("l1", 1)])
        .attached(sha('2'), sha('1'), 90, 5);
    assert_eq!(given.when(rules(serde_json::json!({}))).deletions(), 0);
}

#[test]
fn a_kept_index_keeps_its_childrens_attachments_and_a_deleted_one_takes_them() {
    let given = Given::default()
        .manifest(sha('1'), 90, &[("amd64", 10)])
        .index(sha('2'), 90, &[sha('1')])
        .tag("v1", sha('2'), 90)
        .signed(sha('1'), sha('3'), 1);
    assert_eq!(
        given
            .when(rules(serde_json::json!({"tag_pattern": "^x"})))
            .deletions(),
        0
    );
    let plan = given.when(rules(serde_json::json!({"tag_pattern": "^v1$"})));
    assert_eq!(manifests(&plan), [sha('1'), sha('2'), sha('3')]);
    assert_eq!(plan.bytes(), 11);
}

#[test]
fn orphan_attachments_go_by_the_untagged_rule_only() {
    // A signature of a digest the image lacks, and an SBOM whose subject is gone.
    let given = Given::default()
        .manifest(sha('1'), 90, &[("l1", 1)])
        .tag("v1", sha('1'), 90)
        .signed(sha('9'), sha('2'), 60)
        .attached(sha('3'), sha('8'), 60, 4);
    assert_eq!(
        given
            .when(rules(serde_json::json!({"tag_pattern": "^x"})))
            .deletions(),
        0
    );
    let plan = given.when(rules(
        serde_json::json!({"tag_pattern": "^x", "untagged": true}),
    ));
    assert_eq!(tags(&plan), [scheme_tag(sha('9'), ".sig")]);
    assert_eq!(manifests(&plan), [sha('2'), sha('3')]);
    assert!(
        plan.tags
            .iter()
            .all(|t| t.reason == Reason::OrphanAttachment)
    );
    assert!(
        plan.manifests
            .iter()
            .all(|m| m.reason == Reason::OrphanAttachment)
    );
    // older_than spares recent orphans as it spares recent untagged manifests.
    let plan = given.when(rules(
        serde_json::json!({"tag_pattern": "^x", "untagged": true, "older_than": "90d"}),
    ));
    assert_eq!(plan.deletions(), 0);
}

#[test]
fn a_tag_that_only_looks_like_a_scheme_is_an_ordinary_tag() {
    for name in [
        "sha256-abc.sig",
        "sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA.sig",
    ] {
        assert_eq!(scheme_hex(name), None, "{name}");
    }
    assert_eq!(
        scheme_hex(scheme_tag(sha('1'), ".sig")),
        Some(&sha('1')[7..])
    );
    assert_eq!(
        scheme_hex(&format!("{}.tar", scheme_tag(sha('1'), ""))),
        None
    );
    let given = Given::default()
        .manifest(sha('1'), 90, &[("l1", 1)])
        .tag("v1", sha('1'), 90)
        .manifest(sha('2'), 10, &[("l2", 1)])
        .tag("sha256-abc.sig", sha('2'), 10);
    let plan = given.when(rules(serde_json::json!({"keep_last": 1})));
    // It counts toward keep_last, as the newest push.
    assert_eq!(tags(&plan), ["v1"]);
}

// What a plan keeps (`explain`).

impl Given {
    fn explained(&self, rules: RulesSpec) -> (ImagePlan<'static>, Kept<'static>) {
        let rules = Rules::compile(&rules).expect("valid rules");
        explain(&rules, &self.0, now())
    }
}

/// Every tag and manifest of `given` is either deleted or kept under `spec`, never both.
fn assert_partition(given: &Given, spec: serde_json::Value) {
    let (plan, kept) = given.explained(rules(spec.clone()));
    assert_eq!(plan, given.when(rules(spec.clone())), "{spec}");
    let mut all_tags: Vec<&str> = tags(&plan);
    all_tags.extend(kept.tags.iter().map(|t| t.name));
    all_tags.sort();
    let mut expected: Vec<&str> = given.0.tags.iter().map(|t| t.name).collect();
    expected.sort();
    assert_eq!(all_tags, expected, "{spec}");
    let mut all_manifests: Vec<&str> = manifests(&plan);
    all_manifests.extend(kept.manifests.iter().map(|m| m.digest));
    all_manifests.sort();
    let mut expected: Vec<&str> = given.0.manifests.iter().map(|m| m.digest).collect();
    expected.sort();
    assert_eq!(all_manifests, expected, "{spec}");
}

#[test]
fn a_plan_says_which_rule_kept_each_tag() {
    let given = five_versions()
        .manifest("mx", 90, &[("lx", 1)])
        .tag("latest", "mx", 90)
        .manifest("mk", 90, &[("lk", 1)])
        .tag("v0-keep", "mk", 90);
    let spec = serde_json::json!({
        "tag_pattern": "^v", "keep_tag_pattern": "keep", "keep_last": 1, "older_than": "25d"
    });
    let (plan, kept) = given.explained(rules(spec.clone()));
    // v5 (10 days) is the last one; v4 (20 days) is newer than the cut-off.
    assert_eq!(tags(&plan), ["v1", "v2", "v3"]);
    let why: Vec<(&str, KeepReason)> = kept.tags.iter().map(|t| (t.name, t.reason)).collect();
    assert_eq!(
        why,
        [
            ("latest", KeepReason::NotMatched),
            ("v0-keep", KeepReason::KeepTagPattern),
            ("v4", KeepReason::NewerThan),
            ("v5", KeepReason::KeepLast),
        ]
    );
    let why: Vec<(&str, KeepReason)> = kept
        .manifests
        .iter()
        .map(|m| (m.digest, m.reason))
        .collect();
    assert_eq!(
        why,
        [
            ("m4", KeepReason::KeptTag),
            ("m5", KeepReason::KeptTag),
            ("mk", KeepReason::KeptTag),
            ("mx", KeepReason::KeptTag),
        ]
    );
    assert_partition(&given, spec);
}

#[test]
fn a_plan_says_what_it_keeps_of_attachments_indexes_and_untagged_manifests() {
    let v10 = sha('a');
    let given = signed_releases()
        .manifest(sha('1'), 90, &[("amd64", 10)])
        .index(sha('2'), 90, &[sha('1')])
        .tag("multi", sha('2'), 90)
        .manifest(sha('3'), 2, &[("fresh", 3)])
        .manifest(sha('4'), 200, &[("stale", 4)]);
    let spec = serde_json::json!({"tag_pattern": "^v", "keep_last": 1});
    let (plan, kept) = given.explained(rules(spec.clone()));
    assert_eq!(manifests(&plan), [sha('8'), sha('9'), sha('b'), sha('c')]);
    let tag = |name: &str| kept.tags.iter().find(|t| t.name == name).unwrap();
    assert_eq!(tag("v10").reason, KeepReason::KeepLast);
    assert_eq!(tag("multi").reason, KeepReason::NotMatched);
    for name in [scheme_tag(v10, ".sig"), scheme_tag(v10, "")] {
        assert_eq!(
            (tag(name).reason, tag(name).subject),
            (KeepReason::AttachmentOf, Some(v10)),
            "{name}"
        );
    }
    let manifest = |d: &str| {
        let m = kept.manifests.iter().find(|m| m.digest == d).unwrap();
        (m.reason, m.subject)
    };
    assert_eq!(manifest(v10), (KeepReason::KeptTag, None));
    assert_eq!(manifest(sha('d')), (KeepReason::AttachmentOf, Some(v10)));
    assert_eq!(manifest(sha('e')), (KeepReason::AttachmentOf, Some(v10)));
    assert_eq!(manifest(sha('f')), (KeepReason::AttachmentOf, Some(v10)));
    assert_eq!(manifest(sha('1')), (KeepReason::ChildOfKept, None));
    assert_eq!(manifest(sha('3')), (KeepReason::UntaggedNotSet, None));
    assert_eq!(manifest(sha('4')), (KeepReason::UntaggedNotSet, None));
    assert_partition(&given, spec);

    // With `untagged` and a cut-off, the stale one goes and the fresh one is newer than it.
    let spec = serde_json::json!({"tag_pattern": "^v", "untagged": true, "older_than": "30d"});
    let (plan, kept) = given.explained(rules(spec.clone()));
    assert!(manifests(&plan).contains(&sha('4')));
    let fresh = kept
        .manifests
        .iter()
        .find(|m| m.digest == sha('3'))
        .unwrap();
    assert_eq!(fresh.reason, KeepReason::NewerThan);
    assert_partition(&given, spec);
}

#[test]
fn a_keep_reason_is_stored_under_its_serde_name_and_read_back() {
    for reason in KeepReason::ALL {
        assert_eq!(serde_json::json!(reason), reason.as_str());
        assert_eq!(KeepReason::parse(reason.as_str()), Some(reason));
    }
    assert_eq!(KeepReason::parse("tag_pattern"), None);
}

#[test]
fn a_manifest_says_what_it_is_attached_to_as_selection_sees_it() {
    let (v1, x) = (sha('1'), sha('2'));
    let has = |d: &str| d == v1 || d == x;
    let tags = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
    // A subject the image lacks, but a signature tag naming v1: attached to v1, as the
    // selection keeps it while v1 stays.
    let sig = scheme_tag(v1, ".sig");
    let seen = attached_to(x, Some(sha('9')), &tags(&[sig]), has).unwrap();
    assert_eq!(
        (seen.digest.as_str(), seen.by, seen.orphan),
        (v1, "cosign_tag", false)
    );
    let given = Given::default()
        .manifest(v1, 90, &[("l1", 1)])
        .tag("v1", v1, 90)
        .attached(x, sha('9'), 90, 5)
        .tag(sig, x, 90);
    let plan = given.when(rules(
        serde_json::json!({"tag_pattern": "^x", "untagged": true}),
    ));
    assert_eq!(plan.deletions(), 0, "{plan:?}");
    // Only names the image lacks: an orphan, by its subject or by scheme tags alone.
    let missing = attached_to(x, Some(sha('9')), &[], has).unwrap();
    assert_eq!(
        (missing.digest.as_str(), missing.by, missing.orphan),
        (sha('9'), "subject", true)
    );
    let stray = scheme_tag(sha('9'), "");
    let by_tag = attached_to(x, None, &tags(&[stray]), has).unwrap();
    assert_eq!((by_tag.by, by_tag.orphan), ("referrers_tag", true));
    // An ordinary tag beside a stray scheme tag: no attachment at all; nor without names.
    assert_eq!(attached_to(x, None, &tags(&[stray, "latest"]), has), None);
    assert_eq!(attached_to(x, None, &tags(&["latest"]), has), None);
    // Naming itself is no attachment.
    assert_eq!(
        attached_to(v1, None, &tags(&[scheme_tag(v1, ".sig")]), has).map(|a| a.orphan),
        Some(true)
    );
}

-- What a manifest is attached to (its OCI 1.1 `subject`) and its `artifactType`, as
-- `manifest.recorded` v2 states them; indexed for listing a manifest's referrers. Rows
-- recorded since v2 get theirs from the log, as a rebuild would.
ALTER TABLE manifests ADD COLUMN subject TEXT;
ALTER TABLE manifests ADD COLUMN artifact_type TEXT;
UPDATE manifests SET
    subject = (SELECT e.payload ->> '$.subject' FROM events e
        WHERE e.stream_id = 'image-' || manifests.image_id
          AND e.event_type = 'manifest.recorded'
          AND e.payload ->> '$.digest' = manifests.digest
        ORDER BY e.position DESC LIMIT 1),
    artifact_type = (SELECT e.payload ->> '$.artifact_type' FROM events e
        WHERE e.stream_id = 'image-' || manifests.image_id
          AND e.event_type = 'manifest.recorded'
          AND e.payload ->> '$.digest' = manifests.digest
        ORDER BY e.position DESC LIMIT 1);
CREATE INDEX manifests_subject_idx ON manifests (image_id, subject);

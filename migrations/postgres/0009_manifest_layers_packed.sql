-- Each manifest's layers, packed into its own row for prune planning: `digest size` per
-- layer, in order, all separated by a space (`plans::pack_layers` writes the same text).
-- Planning reads every manifest of a namespace; reading the layers from here rather than
-- from `manifest_layers` (a row per layer) halves the rows it reads. `manifest_layers`
-- stays the source for listings.
ALTER TABLE manifests ADD COLUMN layers_packed TEXT NOT NULL DEFAULT '';
UPDATE manifests SET layers_packed = COALESCE((
    SELECT string_agg(l.digest || ' ' || l.size, ' ' ORDER BY l.idx)
    FROM manifest_layers l
    WHERE l.image_id = manifests.image_id AND l.manifest_digest = manifests.digest
), '');

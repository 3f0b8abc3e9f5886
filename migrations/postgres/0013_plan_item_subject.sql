-- A planned deletion of an attachment names the manifest it is attached to (reason
-- `attachment_of`); NULL for every other item.
ALTER TABLE prune_plan_items ADD COLUMN subject TEXT;

-- Storage classes: the S3 storage class a bucket's packs are written in
-- (empty: the service's default). Index files and manifests never take it.
ALTER TABLE buckets ADD COLUMN s3_pack_storage_class TEXT NOT NULL DEFAULT '';

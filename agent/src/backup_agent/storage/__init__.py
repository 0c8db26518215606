"""Everything that talks to S3: the client, object layout, manifests, packing and transfers."""

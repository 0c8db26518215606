#
# Cookbook:: backup_agent
# Attributes:: maintenance
#
# recipe[backup_agent::maintenance]: the one node of an environment that applies retention for
# every node (`backup-agent prune --all-nodes`), runs `bucket setup`, and holds delete rights
# (docs/IAM.md). Nothing secret here: the credentials come from the data bag item below.

# Item of node['backup_agent']['data_bag']['name'] with the maintenance identity's keys (bucket,
# region, endpoint_url, access_key_id, secret_access_key, session_token, kms_key_id), encrypted
# with the same secret as the nodes' items. Never give the nodes this item.
default['backup_agent']['maintenance']['item'] = 'maintenance'
default['backup_agent']['maintenance']['config_path'] = '/etc/backup-agent/maintenance.yaml'
default['backup_agent']['maintenance']['state_dir'] = '/var/lib/backup-agent-maintenance'
# Key prefix the nodes' storage prefixes live under ('' = the bucket's top level: the default
# storage.prefix is the node name).
default['backup_agent']['maintenance']['under'] = ''
# Retention for every job found, and by job name over it (keep_last, keep_daily, ...). Jobs
# without one keep every snapshot. Set from the environment, like the nodes' jobs.
default['backup_agent']['maintenance']['retention'] = {}
default['backup_agent']['maintenance']['jobs'] = {}
# Only these node prefixes (empty: every one found in the bucket).
default['backup_agent']['maintenance']['nodes'] = []
# Regions whose EBS snapshot sets (tagged by the agent) get the same retention, e.g. ['eu-west-1'].
default['backup_agent']['maintenance']['ebs_regions'] = []
# Same as the nodes' storage.object_lock (nil: none): `bucket setup` then creates or verifies
# Object Lock on the bucket.
default['backup_agent']['maintenance']['object_lock'] = nil
# systemd timer: when `prune --all-nodes` runs (OnCalendar syntax), spread by up to this many seconds.
default['backup_agent']['maintenance']['on_calendar'] = 'daily'
default['backup_agent']['maintenance']['randomized_delay_sec'] = 3600
# Run `bucket setup` before each prune (idempotent: it changes nothing when all is set).
default['backup_agent']['maintenance']['bucket_setup'] = true

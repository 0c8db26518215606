#
# Cookbook:: backup_agent
# Attributes:: default
#
# Nothing secret belongs here: bucket, credentials and job passwords come from the encrypted data
# bag item (see README.md) and reach the config file through node.run_state only. Node
# attributes are stored in clear on the Chef server and every node can read them; the recipes
# refuse the secret keys here.

# --- install: a venv with the agent this cookbook carries -----------------------------------
# The agent is the cookbook's own wheel (files/agent/backup_agent-VERSION-py3-none-any.whl): no
# index is ever asked for `backup-agent`. `version` names the wheel; the cookbook carries one.
default['backup_agent']['install']['version'] = '0.1.0'
default['backup_agent']['install']['dir'] = '/opt/backup-agent'
# The Python that creates the venv (>= 3.11), and the packages that provide it and its venv
# module: Debian's own. When this Python changes (another path, or an upgrade that moved it),
# the venv is made again from scratch and the agent reinstalled.
default['backup_agent']['install']['python'] = '/usr/bin/python3'
default['backup_agent']['install']['packages'] = %w(python3 python3-venv)
# Where pip gets the agent's DEPENDENCIES (never the agent): the exact versions and sha256 of
# files/agent/requirements.lock, installed with --require-hashes. nil/empty means pip's own
# defaults (PyPI, or whatever /etc/pip.conf says). An index (index_url, PEP 503 "simple") and/or
# wheel folders or pages (find_links); no_index true uses find_links only. A URL may carry
# credentials (https://user:token@mirror/simple): the install step is then sensitive, and they
# reach pip through its environment, never its command line.
default['backup_agent']['install']['index_url'] = nil
default['backup_agent']['install']['find_links'] = []
default['backup_agent']['install']['no_index'] = false
# More arguments for the dependency install (e.g. --cert, --trusted-host).
default['backup_agent']['install']['pip_extra_args'] = []
# nil: the cookbook's files/agent/requirements.lock. Else the absolute path, on the node, of a lock
# of your own in the same format (`make cookbook-lock` writes one), e.g. with the hashes of the
# wheels your mirror builds for another Python; a wrapper cookbook puts it there, and the lock of
# each of `extras` beside it (/etc/x/requirements.lock -> /etc/x/requirements-chunking.lock).
default['backup_agent']['install']['lock_file'] = nil
# The agent's extras to install with it, each from the lock the cookbook carries for it
# (files/agent/requirements-EXTRA.lock, pinned and hashed like requirements.lock). chunking:
# numpy, which makes the content-defined chunking of big files ~35x faster (same chunks without
# it; ~73 MB installed). [] installs none; an existing venv keeps what it has until it is made
# again (a new install.python, or remove install.dir).
default['backup_agent']['install']['extras'] = %w(chunking)
# Where `backup-agent` lands on root's PATH.
default['backup_agent']['install']['bin_link'] = '/usr/local/bin/backup-agent'

# --- config: the non-secret settings of config.yaml, under the file's own keys ---------------
# Anything `backup-agent schema` documents can be set here (except storage's bucket, region,
# endpoint_url, credentials, kms_key_id and encryption keys: the data bag item's). nil means "not rendered": the
# agent's own default applies.
default['backup_agent']['config_path'] = '/etc/backup-agent/config.yaml'
default['backup_agent']['config']['node'] = nil # default: the Chef node name
default['backup_agent']['config']['state_dir'] = '/var/lib/backup-agent'
default['backup_agent']['config']['log_level'] = 'INFO'
default['backup_agent']['config']['splay'] = nil
default['backup_agent']['config']['max_parallel_jobs'] = nil
default['backup_agent']['config']['storage']['prefix'] = nil # S3 key prefix; agent default: the node name
default['backup_agent']['config']['storage']['sse'] = nil # AES256 | aws:kms (kms_key_id from the data bag)
# zstd level (0-19) of what files and command jobs store; 0: no compression. Agent default: 3.
default['backup_agent']['config']['storage']['compression_level'] = nil
# Client-side encryption is on when the data bag item has `encryption_key` (never an attribute).
# true: still read snapshots taken before it was turned on (their manifests are not sealed, so
# anyone who can write to the bucket could have forged one); agent default: false.
default['backup_agent']['config']['storage']['read_unencrypted_snapshots'] = nil
default['backup_agent']['config']['notify']['healthchecks_url'] = nil
default['backup_agent']['config']['notify']['webhook_url'] = nil
default['backup_agent']['config']['metrics']['textfile'] = nil
# Optional AWS endpoint overrides (ec2_endpoint_url, imds_endpoint, instance_id, region).
default['backup_agent']['config']['aws'] = {}

# --- secrets: where the encrypted data bag item lives ----------------------------------------
default['backup_agent']['data_bag']['name'] = 'backup_agent'
# nil: the item named after the node's policy_group (Policyfile nodes), else the one named after
# node.chef_environment, else `fallback_item`.
default['backup_agent']['data_bag']['item'] = nil
default['backup_agent']['data_bag']['fallback_item'] = 'default'
# nil: Chef::Config[:encrypted_data_bag_secret] (client.rb's encrypted_data_bag_secret).
default['backup_agent']['data_bag']['secret_file'] = nil
# Refuse a plain (unencrypted) item so credentials never sit readable on the Chef server.
default['backup_agent']['data_bag']['require_encrypted'] = true

# --- secrets: which store holds the bucket, credentials, job secrets and notification URLs ----
# data_bag:   the encrypted data bag item above (one shared secret decrypts every item);
# chef_vault: the chef-vault item of the same name and choice (vault data_bag.name, item by
#             policy_group / chef_environment / fallback_item): only the vault's clients decrypt it;
# secret:     secret_name from a secret service through Chef 18's `secret` helper (default: AWS
#             Secrets Manager, region etc. in secret_config); its value is a JSON object of the
#             item's keys. Each goes through the same checks and reaches only node.run_state.
default['backup_agent']['secrets']['source'] = 'data_bag'
default['backup_agent']['secrets']['secret_name'] = nil
default['backup_agent']['secrets']['secret_service'] = 'aws_secrets_manager'
default['backup_agent']['secrets']['secret_config'] = {}

# --- service ---------------------------------------------------------------------------------
default['backup_agent']['service']['name'] = 'backup-agent'
default['backup_agent']['service']['enabled'] = true
# auto: systemd where systemd is PID 1, otherwise none (the unit is still written: systemd_unit,
# /etc/systemd/system/<name>.service).
default['backup_agent']['service']['manager'] = 'auto' # auto | systemd | none
# Where the service is not managed: write the unit anyway (an image that boots systemd later has
# it), or not (false: nothing under /etc/systemd, e.g. a sandbox or another init for good).
default['backup_agent']['service']['unit_when_unmanaged'] = true
default['backup_agent']['service']['nice'] = 10
default['backup_agent']['service']['io_scheduling_class'] = 'idle'
# Without a service manager: on a config change, SIGHUP the daemon holding state_dir/daemon.lock
# (if one runs), or run reload_command instead (e.g. ['supervisorctl', 'signal', 'HUP',
# 'backup-agent']); on a new agent version run restart_command, if set.
default['backup_agent']['service']['reload_unmanaged'] = true
default['backup_agent']['service']['reload_command'] = nil
default['backup_agent']['service']['restart_command'] = nil

# --- bucket: apply `backup-agent bucket setup` at converge time (backup_agent::bucket) --------
default['backup_agent']['bucket']['setup'] = false

# --- jobs: a map keyed by job name, keys exactly as in the agent's config -------------------
# Set them from an environment or role, e.g.
#   "default_attributes": {"backup_agent": {"jobs": {"etc": {"type": "files", "paths": ["/etc"],
#                                                             "schedule": "daily at 02:00"}}}}
# A job set to nil at a higher precedence level is dropped from the config. Wrapper cookbooks
# can also declare jobs with the backup_agent_job resource.
default['backup_agent']['jobs'] = {}

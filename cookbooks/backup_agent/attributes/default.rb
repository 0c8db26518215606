#
# Cookbook:: backup_agent
# Attributes:: default
#
# Nothing secret belongs here: bucket, credentials and job passwords come from the encrypted data
# bag item (see README.md) and reach the config file through node.run_state only. Node
# attributes are stored in clear on the Chef server and every node can read them; the recipes
# refuse the secret keys here.

# --- install: a venv with the pinned agent ---------------------------------------------------
default['backup_agent']['install']['version'] = '0.1.0'
default['backup_agent']['install']['dir'] = '/opt/backup-agent'
# The Python that creates the venv, and the packages that provide it and its venv module. The
# agent needs Python >= 3.11: the distribution's python3 where that is new enough (Debian 12,
# Ubuntu 24.04), its python3.11 package elsewhere. A distribution Python, not pyenv/SCL, so the
# venv does not lose its interpreter under it.
modern_python3 =
  (platform?('debian') && node['platform_version'].to_i >= 12) ||
  (platform?('ubuntu') && node['platform_version'].to_f >= 24.04)
default['backup_agent']['install']['python'] = modern_python3 ? '/usr/bin/python3' : '/usr/bin/python3.11'
default['backup_agent']['install']['packages'] =
  if platform_family?('debian')
    modern_python3 ? %w(python3 python3-venv) : %w(python3.11 python3.11-venv)
  else
    # RHEL-family and Amazon Linux ship venv (with ensurepip) inside the python package.
    %w(python3.11)
  end
# pip sources: nil/empty means pip's own defaults (PyPI, or whatever /etc/pip.conf says).
default['backup_agent']['install']['index_url'] = nil
default['backup_agent']['install']['find_links'] = []
default['backup_agent']['install']['no_index'] = false
default['backup_agent']['install']['pip_extra_args'] = []
# Where `backup-agent` lands on root's PATH.
default['backup_agent']['install']['bin_link'] = '/usr/local/bin/backup-agent'

# --- config: the non-secret settings of config.yaml, under the file's own keys ---------------
# Anything `backup-agent schema` documents can be set here (except storage's bucket, region,
# endpoint_url, credentials and kms_key_id: the data bag item's). nil means "not rendered": the
# agent's own default applies.
default['backup_agent']['config_path'] = '/etc/backup-agent/config.yaml'
default['backup_agent']['config']['node'] = nil # default: the Chef node name
default['backup_agent']['config']['state_dir'] = '/var/lib/backup-agent'
default['backup_agent']['config']['log_level'] = 'INFO'
default['backup_agent']['config']['splay'] = nil
default['backup_agent']['config']['max_parallel_jobs'] = nil
default['backup_agent']['config']['storage']['prefix'] = nil # S3 key prefix; agent default: the node name
default['backup_agent']['config']['storage']['sse'] = nil # AES256 | aws:kms (kms_key_id from the data bag)
default['backup_agent']['config']['notify']['healthchecks_url'] = nil
default['backup_agent']['config']['notify']['webhook_url'] = nil
default['backup_agent']['config']['metrics']['textfile'] = nil
# Optional AWS endpoint overrides (ec2_endpoint_url, imds_endpoint, instance_id, region).
default['backup_agent']['config']['aws'] = {}

# --- secrets: where the encrypted data bag item lives ----------------------------------------
default['backup_agent']['data_bag']['name'] = 'backup_agent'
# nil: the item named after node.chef_environment, else `fallback_item`.
default['backup_agent']['data_bag']['item'] = nil
default['backup_agent']['data_bag']['fallback_item'] = 'default'
# nil: Chef::Config[:encrypted_data_bag_secret] (client.rb's encrypted_data_bag_secret).
default['backup_agent']['data_bag']['secret_file'] = nil
# Refuse a plain (unencrypted) item so credentials never sit readable on the Chef server.
default['backup_agent']['data_bag']['require_encrypted'] = true

# --- service ---------------------------------------------------------------------------------
default['backup_agent']['service']['name'] = 'backup-agent'
default['backup_agent']['service']['enabled'] = true
# auto: systemd where systemd is PID 1, otherwise none (the unit is still rendered).
default['backup_agent']['service']['manager'] = 'auto' # auto | systemd | none
default['backup_agent']['service']['unit_path'] = '/etc/systemd/system/backup-agent.service'
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

#
# Cookbook:: backup_agent
# Recipe:: bucket
#
# Applies `backup-agent bucket setup` (versioning, public access block, default encryption,
# lifecycle rules derived from the jobs) at converge time. Off unless asked for: with
# node['backup_agent']['bucket']['setup'] = true the default recipe includes this one, or put
# it in the run list. The node's credentials then need the bucket-administration permissions
# of docs/IAM.md, more than backups need.
#
# It runs after the config has rendered (both are delayed, config first), and only when the
# config or the agent version changed since the last successful setup (a marker in state_dir
# records both as digests): a converge with nothing to do calls nothing. It does not poll the
# bucket for drift: `bucket setup --dry-run` cannot tell an unchanged bucket from one whose
# endpoint refuses a step (SeaweedFS and MinIO answer NotImplemented to lifecycle rules), so
# every run would count as a change there. Run `backup-agent bucket setup --dry-run` for that.

include_recipe 'backup_agent::default'

# Resource blocks run with the resource as self: the cookbook's helpers (recipe DSL only) are
# reached through `helpers`.
helpers = self

marker = backup_agent_bucket_marker

execute 'backup-agent bucket setup' do
  command [helpers.backup_agent_bin, '-c', helpers.backup_agent_config_path, 'bucket', 'setup']
  only_if { !helpers.backup_agent_run_failed?('the bucket') && helpers.backup_agent_bucket_setup_due? }
  notifies :create, "file[#{marker}]", :immediately
  action :nothing
  delayed_action :run
end

# Written only after a successful setup, so a failed one is retried on the next run.
file marker do
  content(lazy { helpers.backup_agent_bucket_fingerprint })
  owner 'root'
  group 'root'
  mode '0600'
  action :nothing
end

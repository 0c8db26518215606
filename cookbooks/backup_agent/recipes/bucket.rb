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
# It runs after the config has rendered (both are delayed, config first), and only when
# `bucket setup --dry-run --json` reports something to change: a converge with nothing to do
# changes nothing.

include_recipe 'backup_agent::default'

execute 'backup-agent bucket setup' do
  command [backup_agent_bin, '-c', backup_agent_config_path, 'bucket', 'setup']
  only_if { !backup_agent_run_failed?('the bucket') && backup_agent_bucket_changes? }
  action :nothing
  delayed_action :run
end

#
# Cookbook:: backup_agent
# Recipe:: config
#
# Renders config.yaml from node['backup_agent'] (settings and jobs), the backup_agent_job
# resources of this run, and the encrypted data bag item.
#
# Compile time: the attributes are checked and the data bag item is loaded now, so a bad
# attribute or a missing or undecryptable item stops the run before anything changes.
# The file itself renders at the end of the run (`delayed_action`), once every backup_agent_job
# resource, wherever it is declared, has added its job; the secrets reach it through
# node.run_state and a lazy variable, never a node attribute. `backup-agent validate` checks the
# new file before it replaces the old one, and a run that failed earlier leaves it alone.

backup_agent_check_attributes!
backup_agent_secrets
backup_agent_watch_failures

# Resource blocks run with the resource as self: the cookbook's helpers (recipe DSL only) are
# reached through `helpers`.
helpers = self

config_path = backup_agent_config_path

directory ::File.dirname(config_path) do
  owner 'root'
  group 'root'
  mode '0755'
end

directory backup_agent_state_dir do
  owner 'root'
  group 'root'
  mode '0700'
  recursive true
end

template config_path do
  source 'config.yaml.erb'
  owner 'root'
  group 'root'
  mode '0600'
  sensitive true
  # Chef's backup copies would be credentials lying around in file_backup_path.
  backup false
  variables(lazy { { config: helpers.backup_agent_config, path: config_path } })
  verify { |path| helpers.backup_agent_validate_config(path) }
  not_if { helpers.backup_agent_run_failed?(config_path) }
  action :nothing
  delayed_action :create
end

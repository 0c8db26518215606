#
# Cookbook:: backup_agent
# Recipe:: config
#
# Renders config.yaml. Bucket and credentials come from the encrypted data bag item, loaded now
# (compile time) so a missing or undecryptable item stops the run before anything changes, and
# reach the template through node.run_state and a lazy variable: never a node attribute.

backup_agent_secrets

config = node['backup_agent']['config']

directory ::File.dirname(backup_agent_config_path) do
  owner 'root'
  group 'root'
  mode '0755'
end

directory config['state_dir'] do
  owner 'root'
  group 'root'
  mode '0700'
  recursive true
end

template backup_agent_config_path do
  source 'config.yaml.erb'
  owner 'root'
  group 'root'
  mode '0600'
  sensitive true
  # Chef's backup copies would be credentials lying around in file_backup_path.
  backup false
  variables(lazy { { config: backup_agent_config, path: backup_agent_config_path } })
  verify { |path| backup_agent_validate_config(path) }
end

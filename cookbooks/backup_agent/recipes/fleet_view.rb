#
# Cookbook:: backup_agent
# Recipe:: fleet_view
#
# The Ohai plugin (the cookbook's ohai/backup_agent.rb) copies each job's last result, last
# success, snapshot count and last prune (never a secret) into node['backup_agent']['status'] and
# sets the top-level flag node['backup_agent_stale'], so the Chef server can answer
#   knife search node 'backup_agent_stale:true'
#   knife node show NAME -a backup_agent.status
# chef-client loads the plugin from the cookbook before compiling and runs it on every run. This
# recipe writes what the plugin needs to find the agent, and reloads the plugin at the end of a
# run that changed that (the first converge: the node is reported at once).

# Resource blocks run with the resource as self: the cookbook's helpers (recipe DSL only) are
# reached through `helpers`.
helpers = self

fleet_view = node['backup_agent']['fleet_view']
settings_file = fleet_view['settings_file'] || ::File.join(::File.dirname(backup_agent_config_path), 'fleet_view.json')
unless settings_file == '/etc/backup-agent/fleet_view.json'
  Chef::Log.info("backup_agent: the fleet view's settings are #{settings_file}: client.rb needs " \
                 "ohai.plugin[:backup_agent][:settings_file] = #{settings_file.inspect} for the plugin to read them")
end

# Beside the config, backup_agent::config makes the directory.
unless ::File.dirname(settings_file) == ::File.dirname(backup_agent_config_path)
  directory ::File.dirname(settings_file) do
    owner 'root'
    group 'root'
    mode '0755'
    recursive true
  end
end

# What the plugin needs to find the agent, from this node's attributes (nothing secret).
file settings_file do
  content(lazy do
    JSON.pretty_generate(
      'bin' => helpers.backup_agent_bin,
      'config' => helpers.backup_agent_config_path,
      'stale_after_periods' => fleet_view['stale_after_periods']
    ) + "\n"
  end)
  owner 'root'
  group 'root'
  mode '0644'
  notifies :reload, 'ohai[backup_agent]', :delayed
end

# Earlier versions copied the plugin into a directory of Ohai's plugin_path: a second copy there
# would run beside the cookbook's.
%w(backup_agent.rb backup_agent.json).each do |name|
  file ::File.join(fleet_view['plugin_dir'], name) do
    action :delete
  end
end

ohai 'backup_agent' do
  plugin 'backup_agent'
  action :nothing
end

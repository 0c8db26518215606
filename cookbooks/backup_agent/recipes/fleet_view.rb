#
# Cookbook:: backup_agent
# Recipe:: fleet_view
#
# Installs the Ohai plugin that copies each job's last result, last success, snapshot count and
# last prune (never a secret) into node['backup_agent']['status'] and sets the top-level flag
# node['backup_agent_stale'], so the Chef server can answer
#   knife search node 'backup_agent_stale:true'
#   knife node show NAME -a backup_agent.status
# A plugin in Ohai's plugin_path runs with the rest of Ohai at the start of every chef-client run;
# the run that installs or changes it reloads it at the end, so the node is reported at once.

fleet_view = node['backup_agent']['fleet_view']
plugin_dir = fleet_view['plugin_dir']

unless Array(Chef::Config[:ohai][:plugin_path]).map { |dir| ::File.expand_path(dir) }.include?(::File.expand_path(plugin_dir))
  Chef::Log.warn("backup_agent: #{plugin_dir} is not in Ohai's plugin_path (client.rb ohai.plugin_path): " \
                 'the fleet view is refreshed only when the plugin changes')
end

directory plugin_dir do
  owner 'root'
  group 'root'
  mode '0755'
  recursive true
end

# What the plugin needs to find the agent, from this node's attributes (nothing secret).
file ::File.join(plugin_dir, 'backup_agent.json') do
  content(lazy do
    JSON.pretty_generate(
      'bin' => backup_agent_bin,
      'config' => backup_agent_config_path,
      'stale_after_periods' => fleet_view['stale_after_periods']
    ) + "\n"
  end)
  owner 'root'
  group 'root'
  mode '0644'
  notifies :reload, 'ohai[backup_agent]', :delayed
end

cookbook_file ::File.join(plugin_dir, 'backup_agent.rb') do
  source 'ohai/backup_agent.rb'
  owner 'root'
  group 'root'
  mode '0644'
  notifies :reload, 'ohai[backup_agent]', :delayed
end

ohai 'backup_agent' do
  plugin 'backup_agent'
  action :nothing
end

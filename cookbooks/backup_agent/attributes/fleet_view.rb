#
# Cookbook:: backup_agent
# Attributes:: fleet_view
#
# The Ohai plugin behind `knife search node 'backup_agent_stale:true'` (the cookbook's
# ohai/backup_agent.rb; recipe fleet_view writes its settings).

# Where the plugin's settings (agent path, config path, tolerance) are written. nil: beside the
# config, /etc/backup-agent/fleet_view.json by default, where the plugin looks; elsewhere, set
# client.rb's ohai.plugin[:backup_agent][:settings_file] to the same path.
default['backup_agent']['fleet_view']['settings_file'] = nil
# Where earlier versions of the cookbook copied the plugin (into Ohai's plugin_path); the recipe
# removes that copy, which would run beside the cookbook's own.
default['backup_agent']['fleet_view']['plugin_dir'] = '/etc/chef/ohai/plugins'
# A scheduled job is stale when its last success is older than this many periods of its schedule
# (2: one missed or failed run is tolerated), or when it has failed and never succeeded.
default['backup_agent']['fleet_view']['stale_after_periods'] = 2

#
# Cookbook:: backup_agent
# Attributes:: fleet_view
#
# The Ohai plugin behind `knife search node 'backup_agent_stale:true'` (recipe fleet_view).

# A directory in Ohai's plugin_path, so every chef-client run (and `ohai` itself) loads the plugin.
default['backup_agent']['fleet_view']['plugin_dir'] = '/etc/chef/ohai/plugins'
# A scheduled job is stale when its last success is older than this many periods of its schedule
# (2: one missed or failed run is tolerated), or when it has failed and never succeeded.
default['backup_agent']['fleet_view']['stale_after_periods'] = 2

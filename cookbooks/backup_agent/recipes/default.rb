#
# Cookbook:: backup_agent
# Recipe:: default
#
# Installs the agent, renders its config from attributes, backup_agent_job resources and the
# encrypted data bag item, and runs it as a service where systemd is PID 1.

include_recipe 'backup_agent::install'
include_recipe 'backup_agent::config'
include_recipe 'backup_agent::service'
include_recipe 'backup_agent::fleet_view'
include_recipe 'backup_agent::bucket' if node['backup_agent']['bucket']['setup']

#
# Cookbook:: backup_agent
# Recipe:: default
#
# Installs the agent, renders its config from attributes and the encrypted data bag item, and
# runs it as a service where systemd is PID 1.

include_recipe 'backup_agent::install'
include_recipe 'backup_agent::config'
include_recipe 'backup_agent::service'

#
# Cookbook:: backup_agent
# Recipe:: maintenance
#
# The environment's maintenance node (docs/IAM.md): the only holder of delete rights. It installs
# the agent, renders /etc/backup-agent/maintenance.yaml from the maintenance data bag item (its
# own credentials; never the nodes') and node['backup_agent']['maintenance'] (the retention), and
# a systemd timer that runs `bucket setup` and `backup-agent prune --all-nodes`: every job root
# found in the bucket, from the manifests there, without any node's local state.
#
# The secrets stay in node.run_state and reach the file through a lazy variable; the file is
# 0600, sensitive and without backups. Where systemd is not PID 1 the units are rendered only.

include_recipe 'backup_agent::install'

# Resource blocks run with the resource as self: the cookbook's helpers (recipe DSL only) are
# reached through `helpers`.
helpers = self
settings = node['backup_agent']['maintenance']
config_path = settings['config_path']

# Compile time: a missing or undecryptable item stops the run before anything changes.
node.run_state['backup_agent_maintenance_secrets'] ||= BackupAgentCookbook::Secrets.load(
  self, node['backup_agent']['data_bag'].to_hash.merge('item' => settings['item']),
  node.chef_environment, node.policy_group
)

directory ::File.dirname(config_path) do
  owner 'root'
  group 'root'
  mode '0755'
end

directory settings['state_dir'] do
  owner 'root'
  group 'root'
  mode '0700'
  recursive true
end

template config_path do
  source 'maintenance.yaml.erb'
  owner 'root'
  group 'root'
  mode '0600'
  sensitive true
  backup false
  variables(lazy do
    { path: config_path,
      config: BackupAgentCookbook::MaintenanceConfig.build(
        settings.to_hash, node.run_state['backup_agent_maintenance_secrets'], node.policy_group || node.chef_environment
      ) }
  end)
  # Raises rather than returning false: on false Chef keeps the rejected file (credentials) in
  # file_cache_path/failed_validations. Before the first install there is no agent to ask.
  verify do |path|
    next true unless BackupAgentCookbook.executable?(helpers.backup_agent_bin)
    result = helpers.shell_out(helpers.backup_agent_bin, '-c', path, 'validate')
    next true if result.exitstatus == 0
    raise BackupAgentCookbook::ConfigError, "backup_agent: `backup-agent validate` rejected the new #{config_path}, " \
                                            "which is left unchanged: #{result.stderr.to_s.lines.last.to_s.strip}"
  end
end

unit_dir = ::File.dirname(node['backup_agent']['service']['unit_path'])

template ::File.join(unit_dir, 'backup-agent-maintenance.service') do
  source 'backup-agent-maintenance.service.erb'
  owner 'root'
  group 'root'
  mode '0644'
  variables(bin: helpers.backup_agent_bin, config_path: config_path, bucket_setup: settings['bucket_setup'])
end

template ::File.join(unit_dir, 'backup-agent-maintenance.timer') do
  source 'backup-agent-maintenance.timer.erb'
  owner 'root'
  group 'root'
  mode '0644'
  variables(on_calendar: settings['on_calendar'], randomized_delay_sec: settings['randomized_delay_sec'])
end

if backup_agent_service_managed?
  execute 'backup-agent-maintenance daemon-reload' do
    command %w(systemctl daemon-reload)
    subscribes :run, "template[#{::File.join(unit_dir, 'backup-agent-maintenance.service')}]", :immediately
    subscribes :run, "template[#{::File.join(unit_dir, 'backup-agent-maintenance.timer')}]", :immediately
    action :nothing
  end

  service 'backup-agent-maintenance.timer' do
    provider Chef::Provider::Service::Systemd
    action [:enable, :start]
  end
end

#
# Cookbook:: backup_agent
# Recipe:: service
#
# The systemd unit is always rendered; it is enabled and started only where systemd is PID 1
# (containers and CI machines often run something else as PID 1).

service_settings = node['backup_agent']['service']
unit_path = service_settings['unit_path']
managed = backup_agent_service_managed?

# Minimal container images may lack it; an existing directory is left as it is.
directory ::File.dirname(unit_path) do
  recursive true
end

template unit_path do
  source 'backup-agent.service.erb'
  owner 'root'
  group 'root'
  mode '0644'
  variables(
    bin: backup_agent_bin,
    config_path: backup_agent_config_path,
    nice: service_settings['nice'],
    io_scheduling_class: service_settings['io_scheduling_class']
  )
  notifies :run, 'execute[backup-agent systemctl daemon-reload]', :immediately if managed
end

if managed
  execute 'backup-agent systemctl daemon-reload' do
    command %w(systemctl daemon-reload)
    action :nothing
  end

  service service_settings['name'] do
    provider Chef::Provider::Service::Systemd
    if service_settings['enabled']
      action [:enable, :start]
      subscribes :reload, "template[#{backup_agent_config_path}]", :delayed
      subscribes :restart, "template[#{unit_path}]", :delayed
      subscribes :restart, 'execute[install backup-agent]', :delayed
    else
      action [:stop, :disable]
    end
  end
else
  # Chef::Log rather than a `log` resource: a log resource always counts as updated.
  Chef::Log.warn("backup_agent: not managing service #{service_settings['name']}: " \
                 "#{service_settings['manager'] == 'none' ? "node['backup_agent']['service']['manager'] is 'none'" : 'systemd is not PID 1 here (no /run/systemd/system)'}; " \
                 "#{unit_path} is rendered, start `#{backup_agent_bin} daemon` under your own supervisor")
end

#
# Cookbook:: backup_agent
# Recipe:: service
#
# The systemd unit is always rendered. Where systemd is PID 1 the service is enabled and started
# (delayed: after the config, which renders at the end of the run); a changed config reloads it
# (SIGHUP: running jobs go on), a changed unit or agent version restarts it. A service that was
# not running before the run is just started, with everything new.
#
# Elsewhere (containers, CI machines: PID 1 is something else) the service is not managed, and a
# changed config is still applied: the daemon that holds state_dir/daemon.lock gets a SIGHUP, or
# node['backup_agent']['service']['reload_command'] runs, so a daemon under another supervisor
# picks the change up too.

# Resource blocks run with the resource as self: the cookbook's helpers (recipe DSL only) are
# reached through `helpers`.
helpers = self

service_settings = node['backup_agent']['service']
unit_name = "#{service_settings['name']}.service"
unit_resource = "systemd_unit[#{unit_name}]"
config_template = "template[#{backup_agent_config_path}]"
install_execute = 'execute[install backup-agent]'
managed = backup_agent_service_managed?

if managed || service_settings['unit_when_unmanaged']
  # Minimal container images may lack it (systemd_unit writes /etc/systemd/system/NAME.service
  # without creating the directory); an existing directory is left as it is.
  directory '/etc/systemd/system' do
    recursive true
  end

  # The unit is written in every case (unless service.unit_when_unmanaged is false where the
  # service is not managed): a node where systemd is not PID 1 yet (an image being built, a
  # container) has it ready. `systemd-analyze verify` checks it before it replaces the old one
  # (an ExecStart that is not executable fails the run); it needs no running systemd, and where
  # systemd-analyze is missing Chef skips the check. The daemon-reload after a change needs a
  # running systemd, so it happens only where systemd manages the service.
  systemd_unit unit_name do
    content helpers.backup_agent_unit_content
    verify true
    triggers_reload managed
    action :create
  end
end

if managed
  # Asked now, before this run changes anything.
  was_running = BackupAgentCookbook.service_active?(service_settings['name'])

  service service_settings['name'] do
    provider Chef::Provider::Service::Systemd
    if service_settings['enabled']
      action :enable
      delayed_action :start
      if was_running
        subscribes :reload, config_template, :delayed
        subscribes :restart, unit_resource, :delayed
        subscribes :restart, install_execute, :delayed
      end
    else
      action [:stop, :disable]
    end
  end
else
  # Chef::Log rather than a `log` resource: a log resource always counts as updated.
  reason = if service_settings['manager'] == 'none'
             "node['backup_agent']['service']['manager'] is 'none'"
           else
             'systemd is not PID 1 here (no /run/systemd/system)'
           end
  unit_note = service_settings['unit_when_unmanaged'] ? "/etc/systemd/system/#{unit_name} is rendered, " : ''
  Chef::Log.warn("backup_agent: not managing service #{service_settings['name']}: #{reason}; " \
                 "#{unit_note}run `#{backup_agent_bin} daemon` under your own supervisor")

  if service_settings['reload_command']
    execute 'reload backup-agent' do
      command service_settings['reload_command']
      action :nothing
      subscribes :run, config_template, :delayed
    end
  elsif service_settings['reload_unmanaged']
    ruby_block 'reload backup-agent' do
      block do
        pid = helpers.backup_agent_daemon_pid
        Process.kill('HUP', pid) if pid
      end
      # No daemon running: nothing to tell, and nothing counts as updated.
      only_if { helpers.backup_agent_daemon_pid }
      action :nothing
      subscribes :run, config_template, :delayed
    end
  end

  if service_settings['restart_command']
    execute 'restart backup-agent' do
      command service_settings['restart_command']
      action :nothing
      subscribes :run, install_execute, :delayed
    end
  end
end

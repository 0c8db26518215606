require_relative '../../spec_helper'

describe 'backup_agent::service' do
  include_context 'with backup_agent data bag'

  let(:systemd) { false }
  let(:was_running) { true }
  let(:service_attributes) { {} }
  let(:chef_run) do
    allow(BackupAgentCookbook).to receive(:systemd_running?).and_return(systemd)
    allow(BackupAgentCookbook).to receive(:service_active?).with('backup-agent').and_return(was_running)
    ChefSpec::SoloRunner.new do |node|
      node.override['backup_agent']['service'] = service_attributes unless service_attributes.empty?
    end.converge('backup_agent::install', 'backup_agent::config', described_recipe)
  end
  let(:config_template) { chef_run.template(BackupAgentSpec::CONFIG_PATH) }
  let(:unit) { chef_run.systemd_unit(BackupAgentSpec::UNIT_NAME) }

  it 'writes the unit running the daemon, reloading on SIGHUP, with systemd_unit' do
    expect(chef_run).to create_systemd_unit(BackupAgentSpec::UNIT_NAME)
    expect(chef_run.find_resources(:template).map(&:path)).not_to include(BackupAgentSpec::UNIT_PATH)
    content = unit.content
    expect(content).to start_with('# Managed by Chef (cookbook backup_agent)')
    expect(content).to include("[Service]\nType=simple\nExecStart=/opt/backup-agent/bin/backup-agent -c /etc/backup-agent/config.yaml daemon\n")
    expect(content).to include("ExecReload=/bin/kill -HUP $MAINPID\nRestart=on-failure\nRestartSec=30\n")
    expect(content).to include("Nice=10\nIOSchedulingClass=idle\n")
    expect(content).to end_with("[Install]\nWantedBy=multi-user.target\n")
    # The text is written as it is (not an ini hash that would drop the comments).
    expect(unit.to_ini).to eq(content)
  end

  it 'checks the unit with systemd-analyze before it replaces the old one' do
    expect(unit.verify).to be true
  end

  it "gives the daemon its stop_timeout on stop, signalling only the daemon (the agent's default: 60 s)" do
    expect(unit.content).to include("KillMode=mixed\nTimeoutStopSec=90\n")
  end

  context 'without nice and io_scheduling_class' do
    let(:service_attributes) { { 'nice' => nil, 'io_scheduling_class' => nil } }

    it 'leaves them out of the unit' do
      expect(unit.content).not_to include('Nice=')
      expect(unit.content).not_to include('IOSchedulingClass=')
    end
  end

  context 'with a stop_timeout longer than systemd waits by default' do
    let(:chef_run) do
      ChefSpec::SoloRunner.new do |node|
        node.override['backup_agent']['config']['stop_timeout'] = 300
      end.converge('backup_agent::install', 'backup_agent::config', described_recipe)
    end

    it 'waits that long plus the grace of aborted runs' do
      expect(chef_run.systemd_unit(BackupAgentSpec::UNIT_NAME).content).to include("TimeoutStopSec=330\n")
    end
  end

  context 'where systemd is not PID 1' do
    it 'manages no service and logs why, without a resource that would count as updated' do
      allow(Chef::Log).to receive(:warn).and_call_original
      expect(Chef::Log).to receive(:warn).with(/not managing service backup-agent: systemd is not PID 1/)
      expect(chef_run.find_resources(:service)).to be_empty
      expect(chef_run.find_resources(:log)).to be_empty
      expect(unit.delayed_notifications).to be_empty
      expect(unit.immediate_notifications).to be_empty
    end

    it 'writes the unit without a daemon-reload (systemctl cannot reach a systemd that is not running)' do
      expect(unit.triggers_reload).to be false
      expect(chef_run.find_resources(:execute).map(&:name)).not_to include('backup-agent systemctl daemon-reload')
    end

    it 'still applies a changed config: SIGHUP to the running daemon, once, at the end of the run' do
      reload = chef_run.ruby_block('reload backup-agent')
      expect(reload).to do_nothing
      expect(reload).to subscribe_to(BackupAgentSpec::CONFIG_TEMPLATE).on(:run).delayed
      expect(config_template).to notify('ruby_block[reload backup-agent]').to(:run).delayed
    end

    it 'signals the daemon only if one runs (no daemon: the reload is skipped, nothing counts as updated)' do
      reload = chef_run.ruby_block('reload backup-agent')
      allow(BackupAgentCookbook).to receive(:daemon_pid).with('/var/lib/backup-agent').and_return(nil)
      expect(reload.should_skip?(:run)).to be_truthy
      allow(BackupAgentCookbook).to receive(:daemon_pid).with('/var/lib/backup-agent').and_return(4242)
      expect(reload.should_skip?(:run)).to be_falsey
      expect(Process).to receive(:kill).with('HUP', 4242)
      reload.block.call
    end

    context 'with a reload_command and a restart_command' do
      let(:service_attributes) do
        { 'reload_command' => %w(supervisorctl signal HUP backup-agent), 'restart_command' => 'supervisorctl restart backup-agent' }
      end

      it 'runs the reload_command on a config change and the restart_command on a new agent version' do
        expect(chef_run.find_resources(:ruby_block)).to be_empty
        reload = chef_run.execute('reload backup-agent')
        expect(reload.command).to eq(%w(supervisorctl signal HUP backup-agent))
        expect(reload).to subscribe_to(BackupAgentSpec::CONFIG_TEMPLATE).on(:run).delayed
        restart = chef_run.execute('restart backup-agent')
        expect(restart).to subscribe_to('execute[install backup-agent]').on(:run).delayed
        expect(restart).to do_nothing
      end
    end

    context 'with unit_when_unmanaged off' do
      let(:service_attributes) { { 'unit_when_unmanaged' => false } }

      it 'writes nothing under /etc/systemd' do
        expect(chef_run.find_resources(:systemd_unit)).to be_empty
        expect(chef_run.find_resources(:directory).map(&:path)).not_to include('/etc/systemd/system')
      end
    end

    context 'with reload_unmanaged off' do
      let(:service_attributes) { { 'reload_unmanaged' => false } }

      it 'leaves a daemon it does not manage alone' do
        expect(chef_run.find_resources(:ruby_block)).to be_empty
        expect(config_template.delayed_notifications).to be_empty
      end
    end
  end

  context 'where systemd is PID 1' do
    let(:systemd) { true }

    it 'enables the service, and starts it at the end of the run, once the config is there' do
      expect(chef_run).to enable_service('backup-agent')
      expect(chef_run).to start_service('backup-agent')
      delayed = chef_run.run_context.delayed_actions.map { |n| [n.resource.to_s, n.action] }
      expect(delayed.index([BackupAgentSpec::CONFIG_TEMPLATE, :create])).to be < delayed.index(['service[backup-agent]', :start])
    end

    it 'reloads the unit files right when the unit changes (systemd_unit does it, no execute of our own)' do
      expect(unit.triggers_reload).to be true
      expect(chef_run.find_resources(:execute).map(&:name)).not_to include('backup-agent systemctl daemon-reload')
    end

    it 'reloads on a config change and restarts on a unit or agent change, all delayed' do
      service = chef_run.service('backup-agent')
      expect(service).to subscribe_to(BackupAgentSpec::CONFIG_TEMPLATE).on(:reload).delayed
      expect(service).to subscribe_to("systemd_unit[#{BackupAgentSpec::UNIT_NAME}]").on(:restart).delayed
      expect(service).to subscribe_to('execute[install backup-agent]').on(:restart).delayed
      expect(config_template).not_to notify('service[backup-agent]').to(:restart)
      expect(config_template).not_to notify('service[backup-agent]').immediately
    end

    it 'sends nothing to a daemon it does not manage' do
      expect(chef_run.find_resources(:ruby_block)).to be_empty
    end

    context 'and the service was not running before the run' do
      let(:was_running) { false }

      it 'just starts it with the new config and version: no reload or restart on top' do
        expect(chef_run).to start_service('backup-agent')
        expect(config_template.delayed_notifications).to be_empty
        expect(chef_run.execute('install backup-agent').delayed_notifications).to be_empty
      end
    end

    context 'with the service disabled' do
      let(:service_attributes) { { 'enabled' => false } }

      it 'stops and disables it, and does not reload a stopped service' do
        expect(chef_run).to stop_service('backup-agent')
        expect(chef_run).to disable_service('backup-agent')
        expect(config_template.delayed_notifications).to be_empty
      end
    end

    context 'with unit_when_unmanaged off' do
      let(:service_attributes) { { 'unit_when_unmanaged' => false } }

      it 'still writes the unit the service needs' do
        expect(chef_run).to create_systemd_unit(BackupAgentSpec::UNIT_NAME)
      end
    end

    context "with manager 'none'" do
      let(:service_attributes) { { 'manager' => 'none' } }

      it 'leaves the service alone' do
        expect(chef_run.find_resources(:service)).to be_empty
      end
    end
  end
end

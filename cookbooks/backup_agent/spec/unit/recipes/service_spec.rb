require_relative '../../spec_helper'

describe 'backup_agent::service' do
  include_context 'with backup_agent data bag'

  let(:systemd) { false }
  let(:service_attributes) { {} }
  let(:chef_run) do
    allow(BackupAgentCookbook).to receive(:systemd_running?).and_return(systemd)
    ChefSpec::SoloRunner.new do |node|
      node.normal['backup_agent']['service'] = service_attributes unless service_attributes.empty?
    end.converge('backup_agent::install', 'backup_agent::config', described_recipe)
  end

  it 'renders the unit running the daemon, reloading on SIGHUP' do
    expect(chef_run).to create_template(BackupAgentSpec::UNIT_PATH).with(owner: 'root', mode: '0644')
    expect(chef_run).to render_file(BackupAgentSpec::UNIT_PATH).with_content { |content|
      expect(content).to include('ExecStart=/opt/backup-agent/bin/backup-agent -c /etc/backup-agent/config.yaml daemon')
      expect(content).to include('ExecReload=/bin/kill -HUP $MAINPID')
      expect(content).to include('Restart=on-failure')
      expect(content).to include('WantedBy=multi-user.target')
    }
  end

  context 'where systemd is not PID 1' do
    it 'manages no service and logs why, without a resource that would count as updated' do
      allow(Chef::Log).to receive(:warn).and_call_original
      expect(Chef::Log).to receive(:warn).with(/not managing service backup-agent: systemd is not PID 1/)
      expect(chef_run.find_resources(:service)).to be_empty
      expect(chef_run.find_resources(:log)).to be_empty
      expect(chef_run.template(BackupAgentSpec::UNIT_PATH).delayed_notifications).to be_empty
      expect(chef_run.template(BackupAgentSpec::UNIT_PATH).immediate_notifications).to be_empty
    end
  end

  context 'where systemd is PID 1' do
    let(:systemd) { true }

    it 'enables and starts the service' do
      expect(chef_run).to enable_service('backup-agent')
      expect(chef_run).to start_service('backup-agent')
    end

    it 'reloads the unit files right after the unit changes' do
      expect(chef_run.template(BackupAgentSpec::UNIT_PATH))
        .to notify('execute[backup-agent systemctl daemon-reload]').to(:run).immediately
      expect(chef_run.execute('backup-agent systemctl daemon-reload')).to do_nothing
    end

    it 'reloads on a config change and restarts on a unit or agent change, both delayed' do
      service = chef_run.service('backup-agent')
      expect(service).to subscribe_to("template[#{BackupAgentSpec::CONFIG_PATH}]").on(:reload).delayed
      expect(service).to subscribe_to("template[#{BackupAgentSpec::UNIT_PATH}]").on(:restart).delayed
      expect(service).to subscribe_to('execute[install backup-agent]').on(:restart).delayed
    end

    context 'with the service disabled' do
      let(:service_attributes) { { 'enabled' => false } }

      it 'stops and disables it, and does not reload a stopped service' do
        expect(chef_run).to stop_service('backup-agent')
        expect(chef_run).to disable_service('backup-agent')
        expect(chef_run.template(BackupAgentSpec::CONFIG_PATH).delayed_notifications).to be_empty
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

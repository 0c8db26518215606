require_relative '../../spec_helper'

describe 'backup_agent::default' do
  include_context 'with backup_agent data bag'

  BackupAgentSpec::PLATFORMS.each do |platform, version|
    context "on #{platform} #{version}" do
      platform platform, version

      let(:chef_run) do
        ChefSpec::SoloRunner.new(platform: platform, version: version) do |node|
          node.chef_environment = 'staging'
        end.converge(described_recipe)
      end

      it 'converges, installing, configuring and running the agent' do
        expect { chef_run }.to_not raise_error
        expect(chef_run).to include_recipe('backup_agent::install')
        expect(chef_run).to include_recipe('backup_agent::config')
        expect(chef_run).to include_recipe('backup_agent::service')
      end

      it 'renders the config as a sensitive root-only file' do
        expect(chef_run).to create_template(BackupAgentSpec::CONFIG_PATH).with(
          owner: 'root', group: 'root', mode: '0600', sensitive: true, backup: false
        )
      end

      it 'puts the data bag credentials into the config file' do
        storage = BackupAgentSpec.rendered_config(chef_run)['storage']
        expect(storage).to include('bucket' => 'backup-agent-staging',
                                   'access_key_id' => 'TESTONLYACCESSKEY000')
      end

      it 'installs the agent into a venv and links it onto root\'s PATH' do
        expect(chef_run.find_resources(:package).flat_map { |r| Array(r.package_name) }).to include(/python3/)
        expect(chef_run).to run_execute('create backup-agent venv')
        expect(chef_run).to run_execute('install backup-agent')
        expect(chef_run).to create_link('/usr/local/bin/backup-agent')
      end

      it 'renders the staging schedules and retention' do
        expect(BackupAgentSpec.rendered_config(chef_run)['jobs']).to eq(BackupAgentSpec.environment_jobs('staging').sort.to_h)
      end

      it 'renders the unit, and manages no service where systemd is not PID 1' do
        expect(chef_run).to create_systemd_unit(BackupAgentSpec::UNIT_NAME)
        expect(chef_run.find_resources(:service)).to be_empty
        expect(chef_run.ruby_block('reload backup-agent')).to subscribe_to(BackupAgentSpec::CONFIG_TEMPLATE).on(:run).delayed
      end

      context 'where systemd is PID 1' do
        before { allow(BackupAgentCookbook).to receive(:systemd_running?).and_return(true) }

        it 'enables and starts the service' do
          expect(chef_run).to enable_service('backup-agent')
          expect(chef_run).to start_service('backup-agent')
        end
      end

      it 'keeps every secret value out of the node attributes' do
        node_json = JSON.generate(chef_run.node)
        attributes_json = JSON.generate(chef_run.node.attributes.to_hash)
        BackupAgentSpec.secret_values.each do |secret|
          expect(node_json).not_to include(secret)
          expect(attributes_json).not_to include(secret)
        end
      end

      it 'keeps every secret value out of resources that are not sensitive' do
        exposed = chef_run.resource_collection.reject(&:sensitive).map(&:to_text).join("\n")
        BackupAgentSpec.secret_values.each { |secret| expect(exposed).not_to include(secret) }
      end
    end
  end
end

require_relative '../../spec_helper'

describe 'backup_agent::maintenance' do
  let(:item) do
    { 'id' => 'maintenance', 'bucket' => 'acme-staging-backups', 'region' => 'eu-west-1',
      'access_key_id' => 'test-maintenance-key-id', 'secret_access_key' => 'maintenance-secret-never-in-attributes' }
  end
  let(:managed) { false }
  let(:chef_run) do
    ChefSpec::SoloRunner.new do |node|
      node.chef_environment = 'staging'
      node.override['backup_agent']['maintenance']['retention'] = { 'keep_daily' => 7 }
      node.override['backup_agent']['maintenance']['jobs'] = { 'pg' => { 'keep_daily' => 30 } }
      node.override['backup_agent']['maintenance']['object_lock'] = { 'mode' => 'COMPLIANCE', 'days' => 14 }
    end.converge(described_recipe)
  end
  let(:config) { YAML.safe_load(ChefSpec::Renderer.new(chef_run, chef_run.template('/etc/backup-agent/maintenance.yaml')).content) }

  before do
    stub_data_bag('backup_agent').and_return([*BackupAgentSpec::ITEMS, 'maintenance'])
    BackupAgentSpec::ITEMS.each do |name|
      stub_data_bag_item('backup_agent', name).and_return(BackupAgentSpec.encrypted_item(name))
    end
    stub_data_bag_item('backup_agent', 'maintenance').and_return(BackupAgentSpec.encrypt(item))
    allow(BackupAgentCookbook).to receive(:systemd_running?).and_return(managed)
  end

  it 'installs the agent' do
    expect(chef_run).to include_recipe('backup_agent::install')
  end

  it 'renders its own config 0600, sensitive, without backups, from the maintenance item (not the node item)' do
    template = chef_run.template('/etc/backup-agent/maintenance.yaml')
    expect(template.mode).to eq('0600')
    expect(template.sensitive).to be(true)
    expect(template.backup).to be(false)
    expect(config['storage']).to include('bucket' => 'acme-staging-backups', 'access_key_id' => 'test-maintenance-key-id',
                                         'object_lock' => { 'mode' => 'COMPLIANCE', 'days' => 14 })
    expect(config['maintenance']).to eq('under' => '', 'retention' => { 'keep_daily' => 7 },
                                        'jobs' => { 'pg' => { 'keep_daily' => 30 } })
    expect(config['state_dir']).to eq('/var/lib/backup-agent-maintenance')
  end

  it 'refuses a config the installed agent rejects, naming the file, and keeps the old one' do
    allow(BackupAgentCookbook).to receive(:executable?).and_return(true)
    rejected = double(exitstatus: 2, stderr: "backup-agent: maintenance.retention.keep_forever: unknown key\n")
    allow_any_instance_of(Chef::Recipe).to receive(:shell_out).and_return(rejected)
    verification = chef_run.template('/etc/backup-agent/maintenance.yaml').verifications.first
    expect { verification.verify('/tmp/new-maintenance.yaml') }
      .to raise_error(BackupAgentCookbook::ConfigError, %r{rejected the new /etc/backup-agent/maintenance.yaml.*keep_forever})
  end

  it 'keeps the secrets out of node attributes' do
    attributes = chef_run.node.to_hash.to_json
    expect(attributes).not_to include('maintenance-secret-never-in-attributes')
    expect(attributes).not_to include('test-maintenance-key-id')
  end

  it 'renders a timer that runs bucket setup and prune --all-nodes' do
    content = chef_run.systemd_unit('backup-agent-maintenance.service').content
    expect(content).to include('ExecStart=/opt/backup-agent/bin/backup-agent -c /etc/backup-agent/maintenance.yaml prune --all-nodes')
    expect(content).to include('ExecStartPre=/opt/backup-agent/bin/backup-agent -c /etc/backup-agent/maintenance.yaml bucket setup')
    timer = chef_run.systemd_unit('backup-agent-maintenance.timer').content
    expect(timer).to include('OnCalendar=daily').and include('Persistent=true')
  end

  it 'does not manage the timer where systemd is not PID 1' do
    expect(chef_run).not_to enable_service('backup-agent-maintenance.timer')
  end

  context 'where systemd is PID 1' do
    let(:managed) { true }

    it 'enables and starts the timer' do
      expect(chef_run).to enable_service('backup-agent-maintenance.timer')
      expect(chef_run).to start_service('backup-agent-maintenance.timer')
    end
  end

  context 'without the maintenance item' do
    before { stub_data_bag('backup_agent').and_return(BackupAgentSpec::ITEMS) }

    it 'stops before changing anything, naming the item' do
      expect { chef_run }.to raise_error(BackupAgentCookbook::SecretsError, /no item 'maintenance'/)
    end
  end
end

require_relative '../../spec_helper'

describe 'backup_agent::config' do
  include_context 'with backup_agent data bag'

  let(:environment) { 'staging' }
  let(:chef_run) do
    ChefSpec::SoloRunner.new { |node| node.chef_environment = environment }.converge(described_recipe)
  end
  let(:config) { BackupAgentSpec.rendered_config(chef_run) }

  def encrypted(hash)
    secret = Chef::EncryptedDataBagItem.load_secret(BackupAgentSpec::SECRET_FILE)
    Chef::EncryptedDataBagItem.new(Chef::EncryptedDataBagItem.encrypt_data_bag_item(hash, secret), secret)
  end

  it 'creates the config and state directories' do
    expect(chef_run).to create_directory('/etc/backup-agent').with(owner: 'root', mode: '0755')
    expect(chef_run).to create_directory('/var/lib/backup-agent').with(owner: 'root', mode: '0700')
  end

  it 'renders a sensitive, root-only config that is validated before it replaces the old one' do
    template = chef_run.template(BackupAgentSpec::CONFIG_PATH)
    expect(template.sensitive).to be true
    expect(template.mode).to eq('0600')
    expect(template.owner).to eq('root')
    expect(template.verifications.size).to eq(1)
  end

  it 'renders node, environment, settings and the data bag\'s storage under the contract\'s key names' do
    expect(config.keys).to eq(%w(node environment state_dir log_level storage jobs))
    expect(config).to include('node' => 'fauxhai.local', 'environment' => 'staging',
                              'state_dir' => '/var/lib/backup-agent', 'log_level' => 'INFO')
    expect(config['storage']).to eq(
      'bucket' => 'backup-agent-staging',
      'region' => 'us-east-1',
      'endpoint_url' => 'http://127.0.0.1:18333',
      'access_key_id' => 'TESTONLYACCESSKEY000',
      'secret_access_key' => 'test-only-secret-do-not-use-0000000000000'
    )
  end

  %w(production staging development).each do |env|
    context "in the #{env} environment" do
      let(:environment) { env }

      it "renders the jobs of environments/#{env}.json unchanged, and the #{env} item's bucket" do
        expected = BackupAgentSpec.environment(env)['default_attributes']['backup_agent']['jobs']
        expect(config['jobs']).to eq(expected.sort.to_h)
        expect(config['log_level']).to eq(BackupAgentSpec.environment(env)['default_attributes']['backup_agent']['config']['log_level'])
        expect(config['storage']['bucket']).to eq("backup-agent-#{env}")
      end
    end
  end

  context 'with jobs from attributes' do
    let(:chef_run) do
      ChefSpec::SoloRunner.new do |node|
        node.chef_environment = environment
        node.override['backup_agent']['jobs']['app'] = nil
        node.override['backup_agent']['jobs']['etc']['exclude'] = nil
        node.override['backup_agent']['jobs']['db'] = { 'type' => 'command', 'command' => %w(pg_dump -Fc app),
                                                        'schedule' => 'daily at 01:00', 'splay' => nil }
      end.converge(described_recipe)
    end

    it 'renders them sorted by name, dropping nil jobs and nil keys' do
      expect(config['jobs'].keys).to eq(%w(db etc))
      expect(config['jobs']['db']).to eq('type' => 'command', 'command' => %w(pg_dump -Fc app), 'schedule' => 'daily at 01:00')
      expect(config['jobs']['etc']).not_to have_key('exclude')
    end
  end

  it 'passes the secrets to the template lazily, from node.run_state' do
    expect(chef_run.template(BackupAgentSpec::CONFIG_PATH).instance_variable_get(:@variables))
      .to be_a(Chef::DelayedEvaluator)
    expect(chef_run.node.run_state['backup_agent_secrets']).to include('bucket' => 'backup-agent-staging')
  end

  context 'with optional settings set' do
    let(:chef_run) do
      ChefSpec::SoloRunner.new do |node|
        node.chef_environment = environment
        node.normal['backup_agent']['config'].tap do |c|
          c['node'] = 'web-01'
          c['prefix'] = 'fleet/web-01'
          c['sse'] = 'AES256'
          c['splay'] = 300
          c['max_parallel_jobs'] = 2
          c['healthchecks_url'] = 'https://hc.example/ping/abc'
          c['webhook_url'] = 'https://hooks.example/backup'
          c['metrics_textfile'] = '/var/lib/node_exporter/textfile/backup_agent.prom'
          c['aws'] = { 'imds_endpoint' => 'http://169.254.169.254' }
        end
      end.converge(described_recipe)
    end

    it 'renders each of them under its contract name' do
      expect(config).to include(
        'node' => 'web-01', 'splay' => 300, 'max_parallel_jobs' => 2,
        'aws' => { 'imds_endpoint' => 'http://169.254.169.254' },
        'notify' => { 'healthchecks_url' => 'https://hc.example/ping/abc', 'webhook_url' => 'https://hooks.example/backup' },
        'metrics' => { 'textfile' => '/var/lib/node_exporter/textfile/backup_agent.prom' }
      )
      expect(config['storage']).to include('prefix' => 'fleet/web-01', 'sse' => 'AES256')
    end
  end

  context 'in an environment without its own item' do
    before { stub_data_bag('backup_agent').and_return(%w(default production)) }

    it 'falls back to the default item' do
      expect(config['storage']['bucket']).to eq('backup-agent-default')
      expect(config['environment']).to eq('staging')
    end
  end

  context 'with the item named by attribute' do
    let(:chef_run) do
      ChefSpec::SoloRunner.new do |node|
        node.chef_environment = environment
        node.normal['backup_agent']['data_bag']['item'] = 'production'
      end.converge(described_recipe)
    end

    it 'reads that item' do
      expect(config['storage']['bucket']).to eq('backup-agent-production')
    end
  end

  context 'with an item that holds no keys (instance-profile mode)' do
    before do
      stub_data_bag_item('backup_agent', 'staging')
        .and_return(encrypted('id' => 'staging', 'bucket' => 'backup-agent-staging', 'region' => 'eu-west-1'))
    end

    it 'renders no credentials' do
      expect(config['storage']).to eq('bucket' => 'backup-agent-staging', 'region' => 'eu-west-1')
    end
  end

  context 'when a wrapper already put secrets into node.run_state' do
    let(:chef_run) do
      ChefSpec::SoloRunner.new do |node|
        node.chef_environment = environment
        node.run_state['backup_agent_secrets'] = { 'bucket' => 'from-vault' }
      end.converge(described_recipe)
    end

    it 'uses them and does not read the data bag' do
      expect(config['storage']).to eq('bucket' => 'from-vault')
    end
  end

  describe 'failures name the bag, the item and the key' do
    # raise_error inside expect {} also tells ChefSpec the failure is expected (no error dump).
    def expect_failure(message)
      expect { chef_run }.to raise_error(BackupAgentCookbook::SecretsError, message)
    end

    it 'when the bag is missing' do
      stub_data_bag('backup_agent').and_raise(Net::HTTPClientException.new('404 "Not Found"', nil))
      expect_failure(/cannot read data bag 'backup_agent' \(looking for item 'staging' or 'default'\)/)
    end

    it 'when neither the environment item nor the fallback exists' do
      stub_data_bag('backup_agent').and_return(%w(production))
      expect_failure("backup_agent: data bag 'backup_agent' has no item 'staging' nor fallback item " \
                            "'default' (it has: production)")
    end

    it 'when the secret is wrong' do
      stub_data_bag_item('backup_agent', 'staging')
        .and_return(BackupAgentSpec.encrypted_item('staging', secret: 'not-the-secret'))
      expect_failure(%r{cannot decrypt key 'bucket' of data bag item 'backup_agent/staging'})
    end

    it 'when the bucket is missing' do
      stub_data_bag_item('backup_agent', 'staging').and_return(encrypted('id' => 'staging', 'region' => 'us-east-1'))
      expect_failure("backup_agent: data bag item 'backup_agent/staging' has no key 'bucket'")
    end

    it 'when only half of the key pair is there' do
      stub_data_bag_item('backup_agent', 'staging')
        .and_return(encrypted('id' => 'staging', 'bucket' => 'b-staging', 'access_key_id' => 'TESTONLYACCESSKEY000'))
      expect_failure(%r{'backup_agent/staging' has no key 'secret_access_key'})
    end

    it 'when the item is not encrypted' do
      stub_data_bag_item('backup_agent', 'staging').and_return(BackupAgentSpec.plain_item('staging'))
      expect_failure(%r{'backup_agent/staging' is not encrypted})
    end
  end
end

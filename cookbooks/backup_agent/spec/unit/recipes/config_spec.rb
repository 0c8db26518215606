require_relative '../../spec_helper'

describe 'backup_agent::config' do
  include_context 'with backup_agent data bag'

  let(:environment) { 'staging' }
  let(:attributes) { {} }
  let(:chef_run) do
    ChefSpec::SoloRunner.new do |node|
      node.chef_environment = environment
      node.override['backup_agent'] = attributes unless attributes.empty?
    end.converge(described_recipe)
  end
  let(:config) { BackupAgentSpec.rendered_config(chef_run) }

  def encrypted(hash)
    BackupAgentSpec.encrypt(hash)
  end

  it 'creates the config and state directories' do
    expect(chef_run).to create_directory('/etc/backup-agent').with(owner: 'root', mode: '0755')
    expect(chef_run).to create_directory('/var/lib/backup-agent').with(owner: 'root', mode: '0700')
  end

  it 'renders a sensitive, root-only config, without backups, validated before it replaces the old one' do
    template = chef_run.template(BackupAgentSpec::CONFIG_PATH)
    expect(template).to have_attributes(sensitive: true, mode: '0600', owner: 'root', group: 'root', backup: false)
    expect(template.verifications.size).to eq(1)
    expect(chef_run).to create_template(BackupAgentSpec::CONFIG_PATH)
  end

  it 'renders it at the end of the run, after every job resource has registered' do
    template = chef_run.template(BackupAgentSpec::CONFIG_PATH)
    expect(template.action).to eq([:nothing])
    expect(chef_run.run_context.delayed_actions.map { |n| [n.resource, n.action] }).to include([template, :create])
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

      it "renders the schedules and retention of environments/#{env}.json unchanged, and the #{env} item's bucket" do
        expect(config['jobs']).to eq(BackupAgentSpec.environment_jobs(env).sort.to_h)
        expect(config['log_level']).to eq(BackupAgentSpec.environment(env)['default_attributes']['backup_agent']['config']['log_level'])
        expect(config['storage']['bucket']).to eq("backup-agent-#{env}")
      end
    end
  end

  context 'with a job of every type from attributes' do
    let(:attributes) do
      { 'jobs' => {
        'app' => nil,
        'etc' => { 'exclude' => nil, 'one_file_system' => false, 'storage_class' => 'GLACIER_IR' },
        'pg' => { 'type' => 'command', 'preset' => 'postgresql', 'database' => 'app', 'username' => 'backup',
                  'schedule' => 'daily at 01:00', 'splay' => nil, 'retention' => { 'keep_daily' => 14 } },
        'dump' => { 'type' => 'command', 'command' => %w(sh -c pg_dumpall), 'compression' => 'zstd' },
        'volumes' => { 'type' => 'ebs_snapshot', 'volumes' => %w(/dev/xvda vol-0abc), 'copy_to_regions' => %w(eu-west-1),
                       'freeze' => %w(/data), 'schedule' => 'daily at 03:00 UTC', 'retention' => { 'keep_last' => 7 } },
      } }
    end

    it 'renders them sorted by name, type first, dropping nil jobs and nil keys' do
      expect(config['jobs'].keys).to eq(%w(dump etc pg volumes))
      expect(config['jobs']['etc']).to eq(
        'type' => 'files', 'one_file_system' => false, 'paths' => ['/etc'], 'retention' => { 'keep_daily' => 7, 'keep_last' => 4 },
        'schedule' => 'every 6 hours', 'storage_class' => 'GLACIER_IR'
      )
      expect(config['jobs']['dump']).to eq('type' => 'command', 'command' => %w(sh -c pg_dumpall), 'compression' => 'zstd')
      expect(config['jobs']['volumes']).to eq(
        'type' => 'ebs_snapshot', 'copy_to_regions' => %w(eu-west-1), 'freeze' => %w(/data),
        'retention' => { 'keep_last' => 7 }, 'schedule' => 'daily at 03:00 UTC', 'volumes' => %w(/dev/xvda vol-0abc)
      )
    end

    it 'adds the password and secret env of the data bag item\'s job_secrets to the command job of that name only' do
      secrets = BackupAgentSpec.plain_item('staging')['job_secrets']['pg']
      expect(config['jobs']['pg']).to eq(
        'type' => 'command', 'database' => 'app', 'secret_env' => secrets['env'], 'password' => secrets['password'],
        'preset' => 'postgresql', 'retention' => { 'keep_daily' => 14 }, 'schedule' => 'daily at 01:00', 'username' => 'backup'
      )
      expect(config['jobs']['dump']).not_to have_key('password')
    end

    it 'keeps the password out of the node and of every resource that is not sensitive' do
      attributes_json = JSON.generate(chef_run.node.attributes.to_hash)
      exposed = chef_run.resource_collection.reject(&:sensitive).map(&:to_text).join("\n")
      BackupAgentSpec.secret_values.each do |secret|
        expect(attributes_json).not_to include(secret)
        expect(exposed).not_to include(secret)
      end
    end
  end

  describe 'client-side encryption: encryption_key and previous_encryption_keys of the item' do
    let(:key) { 'TESTONLY-encryption-key-0123456789abcdef' }
    let(:old_key) { 'TESTONLY-old-encryption-key-0123456789ab' }

    def item_with(extra)
      encrypted(BackupAgentSpec.plain_item('staging').merge(extra))
    end

    it 'renders nothing of encryption when the item has no key' do
      expect(BackupAgentSpec.plain_item('staging')).not_to have_key('encryption_key')
      expect(config['storage'].keys).not_to include('encryption_key', 'previous_encryption_keys')
    end

    context 'with both in the item' do
      before do
        stub_data_bag_item('backup_agent', 'staging')
          .and_return(item_with('encryption_key' => key, 'previous_encryption_keys' => [old_key]))
      end

      it 'renders them as storage.encryption_key and storage.previous_encryption_keys, after the credentials' do
        expect(config['storage']).to include('encryption_key' => key, 'previous_encryption_keys' => [old_key])
        expect(config['storage'].keys.last(2)).to eq(%w(encryption_key previous_encryption_keys))
      end

      it 'keeps them out of the node and of every resource that is not sensitive' do
        attributes_json = JSON.generate(chef_run.node.attributes.to_hash)
        exposed = chef_run.resource_collection.reject(&:sensitive).map(&:to_text).join("\n")
        [key, old_key].each do |secret|
          expect(attributes_json).not_to include(secret)
          expect(exposed).not_to include(secret)
        end
        expect(chef_run.template(BackupAgentSpec::CONFIG_PATH)).to have_attributes(sensitive: true, mode: '0600')
      end
    end

    context 'in the production environment (its test item has a key and a previous one)' do
      let(:environment) { 'production' }

      it "renders the item's keys, from the real encrypted fixture" do
        item = BackupAgentSpec.plain_item('production')
        expect(item['encryption_key'].length).to be >= 32
        expect(config['storage']).to include('encryption_key' => item['encryption_key'],
                                             'previous_encryption_keys' => item['previous_encryption_keys'])
      end
    end

    {
      'a short encryption_key' => [{ 'encryption_key' => 'TESTONLY-too-short' }, 'encryption_key'],
      'a short previous key' => [{ 'encryption_key' => 'TESTONLY-encryption-key-0123456789abcdef',
                                   'previous_encryption_keys' => %w(TESTONLY-old-encryption-key-0123456789ab TESTONLY-short-old) },
                                 'previous_encryption_keys.1'],
    }.each do |problem, (extra, name)|
      it "stops at compile time with #{problem}, naming the item and the key, never the value" do
        stub_data_bag_item('backup_agent', 'staging').and_return(item_with(extra))
        expect { chef_run }.to raise_error(BackupAgentCookbook::SecretsError) { |error|
          expect(error.message).to eq("backup_agent: key '#{name}' of data bag item 'backup_agent/staging' must be at " \
                                      'least 32 characters (a random one: `openssl rand -base64 33`)')
          expect(error.message).not_to include('TESTONLY')
        }
      end
    end

    it 'stops at compile time when previous_encryption_keys is not a list' do
      stub_data_bag_item('backup_agent', 'staging').and_return(item_with('encryption_key' => key, 'previous_encryption_keys' => old_key))
      expect { chef_run }.to raise_error(
        BackupAgentCookbook::SecretsError,
        "backup_agent: key 'previous_encryption_keys' of data bag item 'backup_agent/staging' must be a list of strings, got String"
      )
    end

    it 'stops at compile time with previous keys but no encryption_key' do
      stub_data_bag_item('backup_agent', 'staging').and_return(item_with('previous_encryption_keys' => [old_key]))
      expect { chef_run }.to raise_error(BackupAgentCookbook::SecretsError,
                                         %r{'backup_agent/staging' has 'previous_encryption_keys' but no 'encryption_key'})
    end

    context 'set as an attribute' do
      let(:attributes) { { 'config' => { 'storage' => { 'encryption_key' => key } } } }

      it 'is refused, pointing at the data bag item, and the value is not echoed' do
        expect { chef_run }.to raise_error(BackupAgentCookbook::ConfigError) { |error|
          expect(error.message).to include("node['backup_agent']['config']['storage']['encryption_key']: comes from the " \
                                           "encrypted data bag item (key 'encryption_key'), never from an attribute")
          expect(error.message).not_to include(key)
        }
      end
    end
  end

  context 'with optional settings set' do
    let(:attributes) do
      { 'config' => {
        'node' => 'web-01', 'splay' => 300, 'max_parallel_jobs' => 2, 'log_format' => 'json',
        'storage' => { 'prefix' => 'fleet/web-01', 'sse' => 'AES256', 'concurrency' => 16,
                       'compression_level' => 6, 'read_unencrypted_snapshots' => true },
        'notify' => { 'timeout' => 5 },
        'metrics' => { 'textfile' => '/var/lib/node_exporter/textfile/backup_agent.prom' },
        'aws' => { 'imds_endpoint' => 'http://169.254.169.254' }
      } }
    end

    # The notification URLs are credentials: they come from the data bag item, like the keys.
    before do
      item = BackupAgentSpec.plain_item('staging').merge(
        'notify' => { 'healthchecks_url' => 'https://hc.example/ping/abc', 'webhook_url' => 'https://hooks.example/backup' }
      )
      stub_data_bag_item('backup_agent', 'staging').and_return(BackupAgentSpec.encrypt(item))
    end

    it 'renders each of them under its own key: one name from attribute to file' do
      expect(config).to include(
        'node' => 'web-01', 'splay' => 300, 'max_parallel_jobs' => 2, 'log_format' => 'json',
        'aws' => { 'imds_endpoint' => 'http://169.254.169.254' },
        'notify' => { 'timeout' => 5, 'healthchecks_url' => 'https://hc.example/ping/abc', 'webhook_url' => 'https://hooks.example/backup' },
        'metrics' => { 'textfile' => '/var/lib/node_exporter/textfile/backup_agent.prom' }
      )
      expect(config['storage']).to include('bucket' => 'backup-agent-staging', 'prefix' => 'fleet/web-01',
                                           'sse' => 'AES256', 'concurrency' => 16, 'compression_level' => 6,
                                           'read_unencrypted_snapshots' => true)
    end

    it 'keeps the notification URLs off the node' do
      attributes_json = JSON.generate(chef_run.node.attributes.to_hash)
      expect(attributes_json).not_to include('hc.example/ping/abc')
      expect(attributes_json).not_to include('hooks.example/backup')
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
    let(:attributes) { { 'data_bag' => { 'item' => 'production' } } }

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

  context 'on a Policyfile node' do
    let(:policy_group) { 'production' }
    let(:chef_run) do
      ChefSpec::SoloRunner.new do |node|
        node.policy_name = 'web'
        node.policy_group = policy_group
        node.chef_environment = '_default'
      end.converge(described_recipe)
    end

    it "reads the item named after its policy group, not the environment's" do
      expect(config['storage']['bucket']).to eq('backup-agent-production')
    end

    it 'names its policy group as the config\'s environment, not _default' do
      expect(config['environment']).to eq('production')
    end

    context 'whose policy group has no item' do
      let(:policy_group) { 'canary' }

      it 'falls back to the environment, then the default item' do
        expect(config['storage']['bucket']).to eq('backup-agent-default')
      end

      it 'names every item it looked for when none is there' do
        stub_data_bag('backup_agent').and_return(%w(production))
        expect { chef_run }.to raise_error(
          BackupAgentCookbook::SecretsError,
          "backup_agent: data bag 'backup_agent' has no item 'canary' nor fallback item '_default' nor fallback item " \
          "'default' (it has: production)"
        )
      end
    end
  end

  it 'prefers the policy group over the environment, when a node has both' do
    expect(BackupAgentCookbook::Secrets.item_candidates({ 'fallback_item' => 'default' }, 'staging', 'production'))
      .to eq(%w(production staging default))
    expect(BackupAgentCookbook::Secrets.item_candidates({ 'fallback_item' => 'default' }, 'staging', nil))
      .to eq(%w(staging default))
  end

  context 'with temporary credentials in the item' do
    before do
      stub_data_bag_item('backup_agent', 'staging').and_return(encrypted(
        'id' => 'staging', 'bucket' => 'b-staging', 'access_key_id' => 'ASIATESTONLY', 'secret_access_key' => 'sk',
        'session_token' => 'TESTONLY-session-token'
      ))
    end

    it 'renders session_token as storage.session_token, beside the key pair' do
      expect(config['storage']).to eq('bucket' => 'b-staging', 'access_key_id' => 'ASIATESTONLY',
                                      'secret_access_key' => 'sk', 'session_token' => 'TESTONLY-session-token')
      expect(chef_run.node.attributes.to_hash.to_json).not_to include('TESTONLY-session-token')
    end
  end

  it 'refuses a session_token without the key pair it was issued with' do
    stub_data_bag_item('backup_agent', 'staging')
      .and_return(encrypted('id' => 'staging', 'bucket' => 'b-staging', 'session_token' => 'TESTONLY-session-token'))
    expect { chef_run }.to raise_error(
      BackupAgentCookbook::SecretsError,
      "backup_agent: data bag item 'backup_agent/staging' has 'session_token' but no 'access_key_id' and " \
      "'secret_access_key' (a session token goes with the key pair it was issued with)"
    )
  end

  context 'when a wrapper already put secrets into node.run_state' do
    let(:provided) { { 'bucket' => 'from-vault' } }
    let(:chef_run) do
      ChefSpec::SoloRunner.new do |node|
        node.chef_environment = environment
        node.run_state['backup_agent_secrets'] = provided
      end.converge(described_recipe)
    end

    it 'uses them and does not read the data bag' do
      expect(config['storage']).to eq('bucket' => 'from-vault')
    end

    context 'with symbol keys and temporary credentials' do
      let(:provided) do
        { bucket: 'from-vault', access_key_id: 'ASIATESTONLY', secret_access_key: 'sk', session_token: 'tok',
          job_secrets: { pg: { password: 'pw' } } }
      end

      it 'takes them as the item\'s keys' do
        expect(config['storage']).to eq('bucket' => 'from-vault', 'access_key_id' => 'ASIATESTONLY',
                                        'secret_access_key' => 'sk', 'session_token' => 'tok')
        expect(chef_run.node.run_state['backup_agent_secrets']['job_secrets']).to eq('pg' => { 'password' => 'pw' })
      end
    end

    {
      'no bucket' => [{ 'region' => 'eu-west-1' },
                      "backup_agent: node.run_state['backup_agent_secrets'] has no key 'bucket'"],
      'half a key pair' => [{ 'bucket' => 'b', 'access_key_id' => 'AKIA' },
                            "backup_agent: node.run_state['backup_agent_secrets'] has no key 'secret_access_key' " \
                            "(it has 'access_key_id'; give both keys, or neither to use the instance profile)"],
      'a value that is not a string' => [{ 'bucket' => 'b', 'region' => 1 },
                                         "backup_agent: key 'region' of node.run_state['backup_agent_secrets'] must be " \
                                         'a string, got Integer'],
      'a session token alone' => [{ 'bucket' => 'b', 'session_token' => 'tok' },
                                  "backup_agent: node.run_state['backup_agent_secrets'] has 'session_token' but no " \
                                  "'access_key_id' and 'secret_access_key' (a session token goes with the key pair it " \
                                  'was issued with)'],
      'a bad job secret' => [{ 'bucket' => 'b', 'job_secrets' => { 'pg' => { 'pasword' => 'x' } } },
                             "backup_agent: key 'job_secrets.pg.pasword' of node.run_state['backup_agent_secrets'] " \
                             'is not a job secret (use password or env)'],
      'not a map' => ['s3://bucket',
                      "backup_agent: node.run_state['backup_agent_secrets'] must be a map of the data bag item's " \
                      'keys, got String'],
    }.each do |problem, (secrets, message)|
      context "with #{problem}" do
        let(:provided) { secrets }

        it 'stops at compile time as for the item, naming the key' do
          expect { chef_run }.to raise_error(BackupAgentCookbook::SecretsError, message)
        end
      end
    end
  end

  it 'passes the secrets to the template lazily, from node.run_state' do
    expect(chef_run.template(BackupAgentSpec::CONFIG_PATH).instance_variable_get(:@variables))
      .to be_a(Chef::DelayedEvaluator)
    expect(chef_run.node.run_state['backup_agent_secrets']).to include('bucket' => 'backup-agent-staging')
  end

  describe 'bad attributes stop the run at compile time, before any resource' do
    let(:attributes) do
      { 'jobs' => { 'etc' => { 'schedule' => 'daly at 02:00' }, 'app' => { 'type' => 'tarball' },
                    'pg' => { 'type' => 'command', 'password' => 'hunter2' } },
        'config' => { 'splay' => '5m' } }
    end

    it 'naming every bad attribute, one line each' do
      expected = [
        'backup_agent: 4 invalid attributes, nothing was changed:',
        "node['backup_agent']['config']['splay']: must be an integer >= 0, got the string \"5m\"",
        "node['backup_agent']['jobs']['etc']['schedule']: 'daly at 02:00' is not a schedule: use " \
          "#{BackupAgentCookbook::Validation::SCHEDULE_FORMS}",
        "node['backup_agent']['jobs']['app']['type']: \"tarball\" is not a job type (use files, command, ebs_snapshot)",
        "node['backup_agent']['jobs']['pg']['password']: is a secret: put it in the encrypted data bag item as " \
          'job_secrets.pg.password, never in an attribute',
      ]
      expect { chef_run }.to raise_error(BackupAgentCookbook::ConfigError) { |error|
        expect(error.message.lines.map(&:strip)).to eq(expected)
      }
    end
  end

  describe 'data bag failures name the bag, the item and the key' do
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

    it 'when the item named by attribute does not exist' do
      chef_run_with_item = ChefSpec::SoloRunner.new do |node|
        node.chef_environment = environment
        node.override['backup_agent']['data_bag']['item'] = 'nope'
      end
      expect { chef_run_with_item.converge(described_recipe) }.to raise_error(
        BackupAgentCookbook::SecretsError,
        "backup_agent: data bag 'backup_agent' has no item 'nope' (it has: default, development, production, staging)"
      )
    end

    it 'when the item is not valid JSON' do
      stub_data_bag_item('backup_agent', 'staging')
        .and_raise(FFI_Yajl::ParseError.new('lexical error: invalid char in json text. {"id": staging'))
      expect_failure(%r{\Abackup_agent: cannot load data bag item 'backup_agent/staging' \(secret file .*\): FFI_Yajl::ParseError: lexical error: invalid char in json text\. \{"id": staging\z})
    end

    context 'in local mode, with a data bag file that is not JSON' do
      let(:data_bags) { Dir.mktmpdir('data_bags') }

      after { FileUtils.rm_rf(data_bags) }

      it 'says so, naming the file' do
        FileUtils.mkdir_p(File.join(data_bags, 'backup_agent'))
        File.write(File.join(data_bags, 'backup_agent', 'staging.json'), '{"id": "staging", "bucket": ')
        stub_data_bag_item('backup_agent', 'staging').and_raise(Net::HTTPFatalError.new('500 "Internal Server Error"', nil))
        allow(Chef::Config).to receive(:[]).and_call_original
        allow(Chef::Config).to receive(:[]).with(:local_mode).and_return(true)
        allow(Chef::Config).to receive(:[]).with(:data_bag_path).and_return(data_bags)
        expect_failure(%r{\Abackup_agent: data bag item 'backup_agent/staging' is not valid JSON \(#{data_bags}/backup_agent/staging\.json\): })
      end
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

    it 'when a job password is not a string' do
      stub_data_bag_item('backup_agent', 'staging')
        .and_return(encrypted('id' => 'staging', 'bucket' => 'b-staging', 'job_secrets' => { 'pg' => { 'password' => 1234 } }))
      expect_failure("backup_agent: key 'job_secrets.pg.password' of data bag item 'backup_agent/staging' must be a string, got Integer")
    end

    it 'when job_secrets holds something that is not a job secret' do
      stub_data_bag_item('backup_agent', 'staging')
        .and_return(encrypted('id' => 'staging', 'bucket' => 'b-staging', 'job_secrets' => { 'pg' => { 'pasword' => 'x' } }))
      expect_failure("backup_agent: key 'job_secrets.pg.pasword' of data bag item 'backup_agent/staging' is not a job " \
                     'secret (use password or env)')
    end

    it 'when notify holds something that is not a notification URL' do
      stub_data_bag_item('backup_agent', 'staging')
        .and_return(encrypted('id' => 'staging', 'bucket' => 'b-staging', 'notify' => { 'slack_url' => 'https://x' }))
      expect_failure("backup_agent: key 'notify.slack_url' of data bag item 'backup_agent/staging' is not a notification " \
                     'URL (use healthchecks_url or webhook_url)')
    end

    it 'when the item is not encrypted' do
      stub_data_bag_item('backup_agent', 'staging').and_return(BackupAgentSpec.plain_item('staging'))
      expect_failure(%r{'backup_agent/staging' is not encrypted})
    end
  end
end

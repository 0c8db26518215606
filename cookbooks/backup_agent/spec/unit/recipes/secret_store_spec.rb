require_relative '../../spec_helper'

# node['backup_agent']['secrets']['source']: the same item keys and the same checks from an
# encrypted data bag item (the default, config_spec.rb), a chef-vault item or a secret service.
describe 'backup_agent::config with another secret store' do
  include_context 'with backup_agent data bag'

  let(:item) { BackupAgentSpec.plain_item('staging').reject { |key, _| key == 'id' } }
  let(:store) { {} }
  let(:chef_run) do
    ChefSpec::SoloRunner.new do |node|
      node.chef_environment = 'staging'
      store.each { |key, value| node.override['backup_agent']['secrets'][key] = value }
      # A command job, for the item's job_secrets.pg.
      node.override['backup_agent']['jobs']['pg'] = { 'type' => 'command', 'command' => %w(pg_dump app) }
    end.converge('backup_agent::config')
  end
  let(:config) { BackupAgentSpec.rendered_config(chef_run) }

  def expect_no_secret_in_attributes
    attributes = JSON.generate(chef_run.node.attributes.to_hash)
    BackupAgentSpec.secret_values.each { |secret| expect(attributes).not_to include(secret) }
  end

  context 'chef_vault' do
    let(:store) { { 'source' => 'chef_vault' } }

    before do
      # A vault lists each item's _keys beside it.
      stub_data_bag('backup_agent').and_return(%w(default default_keys staging staging_keys))
    end

    it 'reads the vault item chosen like the data bag item, never as a plain data bag item' do
      expect_any_instance_of(Chef::Recipe).to receive(:chef_vault_item).with('backup_agent', 'staging').and_return(item)
      expect_any_instance_of(Chef::Recipe).not_to receive(:data_bag_item)
      expect(config['storage']).to include('bucket' => item['bucket'], 'secret_access_key' => item['secret_access_key'])
      expect(config['jobs']['pg']).to include('password' => item['job_secrets']['pg']['password'])
      expect(chef_run.template(BackupAgentSpec::CONFIG_PATH).sensitive).to be true
      expect_no_secret_in_attributes
    end

    it 'checks the vault item as it checks a data bag item' do
      allow_any_instance_of(Chef::Recipe).to receive(:chef_vault_item).and_return(item.merge('access_key_id' => nil))
      expect { chef_run }.to raise_error(
        BackupAgentCookbook::SecretsError,
        "backup_agent: chef-vault item 'backup_agent/staging' has no key 'access_key_id' (it has 'secret_access_key'; " \
        'give both keys, or neither to use the instance profile)'
      )
    end

    it 'says how to share the vault when this node cannot decrypt it' do
      allow_any_instance_of(Chef::Recipe).to receive(:chef_vault_item)
        .and_raise(ChefVault::Exceptions::SecretDecryption, 'staging/staging is not encrypted with your public key')
      expect { chef_run }.to raise_error(
        BackupAgentCookbook::SecretsError,
        %r{\Abackup_agent: cannot load chef-vault item 'backup_agent/staging' \(is this node one of the vault's clients\? `knife vault update backup_agent staging -S 'name:NODE'`\): ChefVault::Exceptions::SecretDecryption}
      )
    end
  end

  context 'secret (Chef 18 secret helper, AWS Secrets Manager)' do
    let(:store) do
      { 'source' => 'secret', 'secret_name' => 'backup-agent/staging', 'secret_config' => { 'region' => 'eu-west-1' } }
    end

    it 'fetches the named secret, a JSON object of the item\'s keys' do
      expect_any_instance_of(Chef::Recipe).to receive(:secret)
        .with(name: 'backup-agent/staging', service: :aws_secrets_manager, config: { region: 'eu-west-1' })
        .and_return(JSON.generate(item))
      expect_any_instance_of(Chef::Recipe).not_to receive(:data_bag_item)
      expect(config['storage']).to include('bucket' => item['bucket'], 'access_key_id' => item['access_key_id'])
      expect(config['jobs']['pg']['secret_env']).to eq(item['job_secrets']['pg']['env'])
      expect_no_secret_in_attributes
    end

    it 'refuses a value that is not a JSON object, without echoing it' do
      allow_any_instance_of(Chef::Recipe).to receive(:secret).and_return('hunter2-not-json')
      expect { chef_run }.to raise_error(BackupAgentCookbook::SecretsError) { |error|
        expect(error.message).to eq("backup_agent: secret 'backup-agent/staging' (aws_secrets_manager) must hold a JSON " \
                                    "object of the data bag item's keys, got text that is not JSON")
      }
    end

    it 'names the secret when the service fails' do
      allow_any_instance_of(Chef::Recipe).to receive(:secret).and_raise(Chef::Exceptions::Secret::FetchFailed, 'AccessDenied')
      expect { chef_run }.to raise_error(BackupAgentCookbook::SecretsError,
                                         "backup_agent: cannot fetch secret 'backup-agent/staging' (aws_secrets_manager): " \
                                         'Chef::Exceptions::Secret::FetchFailed: AccessDenied')
    end

    context 'without a name' do
      let(:store) { { 'source' => 'secret' } }

      it 'stops at compile time, naming the attribute' do
        expect { chef_run }.to raise_error(BackupAgentCookbook::ConfigError, /node\['backup_agent'\]\['secrets'\]\['secret_name'\]: must be set/)
      end
    end
  end

  context 'an unknown source' do
    let(:store) { { 'source' => 'vault' } }

    it 'stops at compile time, naming the attribute' do
      expect { chef_run }.to raise_error(BackupAgentCookbook::ConfigError,
                                         /node\['backup_agent'\]\['secrets'\]\['source'\]: "vault" is not one of data_bag, chef_vault, secret/)
    end
  end
end

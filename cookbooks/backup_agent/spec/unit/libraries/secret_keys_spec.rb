require_relative '../../spec_helper'

# One list of what only the secret store sets (libraries/secret_keys.rb): every key the store
# may carry is accepted by Secrets, rendered by ConfigBuilder and refused as an attribute by
# Validation. The three used to keep lists of their own that disagreed: `secret_env`, rendered
# from job_secrets.<job>.env, was accepted as a plain node attribute.
describe BackupAgentCookbook::SecretKeys do
  let(:job_values) { { 'password' => 'pw', 'env' => { 'API_TOKEN' => 't0k' } } }
  let(:item) do
    { 'bucket' => 'b', 'access_key_id' => 'AKIA1', 'secret_access_key' => 's3cr3t',
      'encryption_key' => 'k' * 32, 'previous_encryption_keys' => ['o' * 32],
      'job_secrets' => { 'pg' => job_values },
      'notify' => { 'healthchecks_url' => 'https://hc.example/ping/uuid', 'webhook_url' => 'https://hooks.example/t' } }
  end

  it 'has a value for every job secret in the test so nothing below is skipped' do
    expect(job_values.keys.sort).to eq(described_class::JOB.keys.sort)
  end

  it 'is the list Secrets, Validation and ConfigBuilder use' do
    expect(BackupAgentCookbook::Secrets::KEYS).to eq(described_class::STORAGE)
    expect(BackupAgentCookbook::Validation::STORAGE_SECRET_KEYS).to eq(described_class::STORAGE)
    expect(BackupAgentCookbook::ConfigBuilder::STORAGE_SECRET_KEYS).to eq(described_class::STORAGE)
    expect(BackupAgentCookbook::Validation::JOB_SECRET_KEYS.sort).to eq(described_class::JOB.values.sort)
    expect(BackupAgentCookbook::ConfigBuilder::JOB_SECRET_KEYS.sort).to eq(described_class::JOB.keys.sort)
    [BackupAgentCookbook::Secrets::NOTIFY_KEYS, BackupAgentCookbook::Validation::NOTIFY_SECRET_KEYS,
     BackupAgentCookbook::ConfigBuilder::NOTIFY_SECRET_KEYS].each { |list| expect(list).to eq(described_class::NOTIFY_KEYS) }
  end

  it 'every job secret of the item is accepted, and rendered under its config key' do
    secrets = BackupAgentCookbook::Secrets.from_run_state(item, 'test')
    config = BackupAgentCookbook::ConfigBuilder.build(
      settings: {}, jobs: { 'pg' => { 'type' => 'command', 'command' => %w(pg_dump app) } },
      secrets: secrets, node_name: 'n', environment: 'e'
    )
    described_class::JOB.each do |item_key, config_key|
      expect(config['jobs']['pg'][config_key]).to eq(job_values[item_key])
    end
  end

  it 'every config key a job secret becomes is refused as a node attribute, naming the item key' do
    defaults = BackupAgentSpec.default_attributes
    described_class::JOB.each do |item_key, config_key|
      attrs = defaults.merge('jobs' => { 'pg' => { 'type' => 'command', config_key => job_values[item_key] } })
      expect(BackupAgentCookbook::Validation.attribute_errors(attrs)).to eq(
        ["node['backup_agent']['jobs']['pg']['#{config_key}']: is a secret: put it in the encrypted data bag item as " \
         "job_secrets.pg.#{item_key}, never in an attribute"]
      )
    end
  end

  it 'every storage and notify key is refused as a node attribute' do
    defaults = BackupAgentSpec.default_attributes
    described_class::STORAGE.each do |key|
      attrs = Marshal.load(Marshal.dump(defaults))
      attrs['config']['storage'][key] = 'x'
      expect(BackupAgentCookbook::Validation.attribute_errors(attrs).join).to include("['storage']['#{key}']: comes from the encrypted")
    end
    described_class::NOTIFY_KEYS.each do |key|
      attrs = Marshal.load(Marshal.dump(defaults))
      attrs['config']['notify'][key] = 'https://x.example/'
      expect(BackupAgentCookbook::Validation.attribute_errors(attrs).join).to include("['notify']['#{key}']: is a credential")
    end
  end

  it 'secrets a wrapper puts in node.run_state keep every key the data bag item may have (notify too)' do
    secrets = BackupAgentCookbook::Secrets.from_run_state(item, 'test')
    expect(secrets.keys.sort).to eq(item.keys.sort)
    expect(secrets['notify']).to eq(item['notify'])
  end

  it 'every storage key of the item is rendered under storage, lists as lists' do
    config = BackupAgentCookbook::ConfigBuilder.build(
      settings: {}, jobs: {}, secrets: BackupAgentCookbook::Secrets.from_run_state(item, 'test'), node_name: 'n', environment: 'e'
    )
    (described_class::STORAGE & item.keys).each { |key| expect(config['storage'][key]).to eq(item[key]) }
    expect(config['storage']['previous_encryption_keys']).to eq(['o' * 32])
  end

  it "db_password becomes a database destination's storage.password, and such an item needs no bucket" do
    secrets = BackupAgentCookbook::Secrets.from_run_state({ 'db_password' => 'pw' }, 'test')
    config = BackupAgentCookbook::ConfigBuilder.build(
      settings: { 'storage' => { 'type' => 'postgresql', 'dsn' => 'host=db dbname=b user=u' } }, jobs: {},
      secrets: secrets, node_name: 'n', environment: 'e'
    )
    expect(config['storage']).to eq('type' => 'postgresql', 'dsn' => 'host=db dbname=b user=u', 'password' => 'pw')
    attrs = Marshal.load(Marshal.dump(BackupAgentSpec.default_attributes))
    attrs['config']['storage']['password'] = 'pw'
    expect(BackupAgentCookbook::Validation.attribute_errors(attrs).join)
      .to include("['storage']['password']: comes from the encrypted data bag item (key 'db_password')")
  end
end

require 'chefspec'
require 'json'
require 'yaml'

# The libraries, loaded up front so examples can stub BackupAgentCookbook and test the pure
# helpers directly (Chef requires the same paths during a converge, so they load once).
Dir[File.expand_path('../libraries/*.rb', __dir__)].sort.each { |library| require library }

module BackupAgentSpec
  REPO = File.expand_path('../../..', __dir__)
  SECRET_FILE = File.join(REPO, 'tests', 'fixtures', 'encrypted_data_bag_secret')
  ITEMS = %w(default development production staging).freeze
  CONFIG_PATH = '/etc/backup-agent/config.yaml'.freeze
  UNIT_PATH = '/etc/systemd/system/backup-agent.service'.freeze

  # Platforms the cookbook supports, as fauxhai knows them.
  PLATFORMS = [
    %w(ubuntu 22.04), %w(ubuntu 24.04), %w(debian 12), %w(amazon 2023), %w(almalinux 9)
  ].freeze

  module_function

  # The TEST-ONLY plain source of an item (tests/fixtures/data_bags).
  def plain_item(name)
    JSON.parse(File.read(File.join(REPO, 'tests', 'fixtures', 'data_bags', 'backup_agent', "#{name}.json")))
  end

  # The committed encrypted item, as Chef's data_bag_item returns it with the given secret.
  def encrypted_item(name, secret: Chef::EncryptedDataBagItem.load_secret(SECRET_FILE))
    raw = JSON.parse(File.read(File.join(REPO, 'data_bags', 'backup_agent', "#{name}.json")))
    Chef::EncryptedDataBagItem.new(raw, secret)
  end

  def environment(name)
    JSON.parse(File.read(File.join(REPO, 'environments', "#{name}.json")))
  end

  # Values that must never show up in node attributes, logs or non-sensitive resources.
  def secret_values
    item = plain_item('staging')
    [item['access_key_id'], item['secret_access_key']]
  end

  def rendered_config(chef_run)
    template = chef_run.template(CONFIG_PATH)
    YAML.safe_load(ChefSpec::Renderer.new(chef_run, template).content)
  end
end

# Data bag stubs backed by the real encrypted fixtures: decryption runs for real in every example.
RSpec.shared_context 'with backup_agent data bag' do
  before do
    stub_data_bag('backup_agent').and_return(BackupAgentSpec::ITEMS)
    BackupAgentSpec::ITEMS.each do |item|
      stub_data_bag_item('backup_agent', item).and_return(BackupAgentSpec.encrypted_item(item))
    end
    allow(BackupAgentCookbook).to receive(:systemd_running?).and_return(false)
  end
end

RSpec.configure do |config|
  config.color = true
  config.formatter = :documentation
  config.log_level = :error
  # The repository's real environments: `node.chef_environment = 'staging'` applies them.
  config.environment_path = File.join(BackupAgentSpec::REPO, 'environments')
  # Most examples run on Debian 12, the platform the project itself is built on.
  config.platform = 'debian'
  config.version = '12'
end

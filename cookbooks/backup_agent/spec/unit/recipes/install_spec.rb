require_relative '../../spec_helper'
require 'digest'

describe 'backup_agent::install' do
  let(:attributes) { {} }
  let(:chef_run) do
    ChefSpec::SoloRunner.new do |node|
      node.normal['backup_agent']['install'] = attributes unless attributes.empty?
    end.converge(described_recipe)
  end
  let(:files) { File.expand_path('../../../files/agent', __dir__) }
  let(:wheel) { 'backup_agent-0.1.0-py3-none-any.whl' }
  let(:pip) { '/opt/backup-agent/bin/pip' }
  let(:deps) { chef_run.execute('install backup-agent dependencies') }

  BackupAgentSpec::PLATFORMS.each do |platform, version|
    context "on #{platform} #{version}" do
      let(:chef_run) { ChefSpec::SoloRunner.new(platform: platform, version: version).converge(described_recipe) }

      it "installs Debian's python3 and python3-venv and makes the venv with /usr/bin/python3" do
        expect(chef_run).to install_package(%w(python3 python3-venv))
        expect(chef_run).to run_execute('create backup-agent venv').with(
          command: %w(/usr/bin/python3 -m venv --clear /opt/backup-agent)
        )
      end
    end
  end

  it 'carries the wheel of the version the attributes name, and the lock' do
    expect(File).to exist(File.join(files, wheel))
    expect(File).to exist(File.join(files, 'requirements.lock'))
  end

  it "copies the cookbook's wheel and lock beside the venv, refusing any other content" do
    expect(chef_run).to create_cookbook_file("/opt/backup-agent/dist/#{wheel}").with(
      source: "agent/#{wheel}", checksum: Digest::SHA256.file(File.join(files, wheel)).hexdigest
    )
    expect(chef_run).to create_cookbook_file('/opt/backup-agent/dist/requirements.lock').with(
      source: 'agent/requirements.lock', checksum: Digest::SHA256.file(File.join(files, 'requirements.lock')).hexdigest
    )
  end

  it 'installs the dependencies and the chunking extra from the locks with --require-hashes, from pip defaults when no source is set' do
    expect(chef_run).to run_execute('install backup-agent dependencies').with(
      command: [pip, 'install', '--disable-pip-version-check', '--no-input', '--require-hashes',
                '--only-binary', ':all:', '-r', '/opt/backup-agent/dist/requirements.lock',
                '-r', '/opt/backup-agent/dist/requirements-chunking.lock'],
      environment: {}, sensitive: false
    )
  end

  it "copies the chunking extra's lock (numpy, hashed) beside the main one" do
    lock = File.join(files, 'requirements-chunking.lock')
    expect(File.read(lock)).to match(/^numpy==\S+ \\\n    --hash=sha256:\h{64}/)
    expect(chef_run).to create_cookbook_file('/opt/backup-agent/dist/requirements-chunking.lock').with(
      source: 'agent/requirements-chunking.lock', checksum: Digest::SHA256.file(lock).hexdigest
    )
  end

  context 'with no extras' do
    let(:attributes) { { 'extras' => [] } }

    it 'installs the main lock only, and copies no lock of an extra' do
      expect(deps.command).to eq([pip, 'install', '--disable-pip-version-check', '--no-input', '--require-hashes',
                                  '--only-binary', ':all:', '-r', '/opt/backup-agent/dist/requirements.lock'])
      expect(chef_run.find_resources(:cookbook_file).map(&:path)).not_to include(/requirements-/)
    end

    it 'installs again when extras are turned back on (the marker names them)' do
      without = chef_run.file('/opt/backup-agent/.chef-backup-agent-install').content
      with = ChefSpec::SoloRunner.new.converge(described_recipe).file('/opt/backup-agent/.chef-backup-agent-install').content
      expect(without).not_to include('extra=')
      expect(with).to include('extra=chunking lock-sha256=')
    end
  end

  context 'with an extra the cookbook carries no lock for' do
    let(:attributes) { { 'extras' => %w(chunking gpu) } }

    it 'stops at compile time, naming the attribute, the missing lock and the extras it carries' do
      expect { chef_run }.to raise_error(
        BackupAgentCookbook::ConfigError,
        "backup_agent: node['backup_agent']['install']['extras'] names \"gpu\", but the cookbook carries no " \
        'files/agent/requirements-gpu.lock (extras it carries: chunking)'
      )
    end
  end

  it "installs the agent from the cookbook's wheel only: no index, no dependencies" do
    expect(chef_run).to run_execute('install backup-agent').with(
      command: [pip, 'install', '--disable-pip-version-check', '--no-input', '--no-index', '--no-deps',
                '--force-reinstall', "/opt/backup-agent/dist/#{wheel}"]
    )
    names = chef_run.find_resources(:execute).flat_map { |r| Array(r.command) + r.environment.to_h.values }
    expect(names.grep(/backup-agent==|backup_agent==/)).to be_empty
  end

  it 'runs the steps in order: venv, wheel and lock, dependencies, agent, marker' do
    order = chef_run.resource_collection.map(&:to_s)
    steps = ['execute[create backup-agent venv]', "cookbook_file[/opt/backup-agent/dist/#{wheel}]",
             'cookbook_file[/opt/backup-agent/dist/requirements.lock]', 'execute[install backup-agent dependencies]',
             'execute[install backup-agent]', 'file[/opt/backup-agent/.chef-backup-agent-install]']
    expect(steps.map { |step| order.index(step) }).to eq(steps.map { |step| order.index(step) }.sort)
  end

  context 'with a dependency mirror' do
    let(:attributes) do
      { 'no_index' => true, 'find_links' => %w(/srv/wheels https://mirror.example/wheels/),
        'index_url' => 'https://pypi.example/simple', 'pip_extra_args' => %w(--prefer-binary) }
    end

    it "passes the sources through pip's environment, not its arguments" do
      expect(deps.environment).to eq(
        'PIP_INDEX_URL' => 'https://pypi.example/simple', 'PIP_NO_INDEX' => '1',
        'PIP_FIND_LINKS' => '/srv/wheels https://mirror.example/wheels/'
      )
      expect(deps.command.last).to eq('--prefer-binary')
      expect(deps.command.join(' ')).not_to include('example')
      expect(chef_run.execute('install backup-agent').environment).to be_nil
    end

    it 'is not sensitive: no URL carries credentials' do
      expect(deps.sensitive).to be false
      expect(chef_run.execute('install backup-agent').sensitive).to be false
    end

    it 'records the version in the marker, the wheel, the lock and the settings only as digests' do
      expect(chef_run).to render_file('/opt/backup-agent/.chef-backup-agent-install').with_content { |content|
        expect(content).to match(/\Abackup-agent==0\.1\.0\nwheel-sha256=\h{64}\nlock-sha256=\h{64}\n
                                   extra=chunking\ lock-sha256=\h{64}\npip-settings-sha256=\h{64}\n\z/x)
        expect(content).not_to include('example')
      }
    end
  end

  {
    'index_url' => { 'index_url' => 'https://deploy:s3cr3t-token@pypi.example/simple' },
    'find_links' => { 'find_links' => %w(/srv/wheels https://deploy:s3cr3t-token@mirror.example/wheels/) },
    'pip_extra_args' => { 'pip_extra_args' => %w(--extra-index-url=https://deploy:s3cr3t-token@pypi.example/simple) },
  }.each do |key, settings|
    context "with credentials in #{key}" do
      let(:attributes) { settings }

      it 'makes both install steps sensitive, and the URL is in no resource Chef would print' do
        expect(deps.sensitive).to be true
        expect(chef_run.execute('install backup-agent').sensitive).to be true
        exposed = chef_run.resource_collection.reject(&:sensitive).map(&:to_text).join("\n")
        expect(exposed).not_to include('s3cr3t-token')
      end
    end
  end

  context "with the operator's own lock" do
    let(:attributes) { { 'lock_file' => '/etc/backup-agent/requirements-py313.lock' } }

    it "installs the dependencies from it and its extras' locks beside it, and copies no lock of the cookbook" do
      expect(deps.command).to include('-r', '/etc/backup-agent/requirements-py313.lock',
                                      '-r', '/etc/backup-agent/requirements-py313-chunking.lock')
      expect(chef_run.find_resources(:cookbook_file).map(&:path)).to eq(["/opt/backup-agent/dist/#{wheel}"])
    end

    it 'installs again when that lock changes' do
      allow(BackupAgentCookbook).to receive(:read_file).with('/etc/backup-agent/requirements-py313.lock').and_return("a==1\n")
      first = chef_run.file('/opt/backup-agent/.chef-backup-agent-install').content
      allow(BackupAgentCookbook).to receive(:read_file).with('/etc/backup-agent/requirements-py313.lock').and_return("a==2\n")
      expect(chef_run.file('/opt/backup-agent/.chef-backup-agent-install').content).not_to eq(first)
    end
  end

  context 'with a version the cookbook does not carry' do
    let(:attributes) { { 'version' => '9.9.9' } }

    it 'stops at compile time, naming the attribute and the wheel it carries' do
      expect { chef_run }.to raise_error(
        BackupAgentCookbook::ConfigError,
        "backup_agent: node['backup_agent']['install']['version'] is \"9.9.9\", but the cookbook carries no " \
        "files/agent/backup_agent-9.9.9-py3-none-any.whl (it carries: #{wheel})"
      )
    end
  end

  describe 'guards, from what the machine answers (stubbed: the same on every host)' do
    let(:marker) { '/opt/backup-agent/.chef-backup-agent-install' }
    let(:fingerprint) { chef_run.file(marker).content }

    def converge_with(marker_content:, venv_python:)
      allow(BackupAgentCookbook).to receive(:executable?).with('/opt/backup-agent/bin/backup-agent').and_return(true)
      allow(BackupAgentCookbook).to receive(:read_file).with(marker).and_return(marker_content)
      allow(BackupAgentCookbook).to receive(:venv_python).with('/opt/backup-agent').and_return(venv_python)
      allow(BackupAgentCookbook).to receive(:real_python).with('/usr/bin/python3').and_return('/usr/bin/python3.11')
      ChefSpec::SoloRunner.new.converge(described_recipe)
    end

    it 'on a fresh machine: makes the venv and runs both install steps' do
      expect(chef_run).to run_execute('create backup-agent venv')
      expect(chef_run).to run_execute('install backup-agent dependencies')
      expect(chef_run).to run_execute('install backup-agent')
    end

    it 'with this wheel, lock and settings installed in a venv of this Python: no venv, no pip' do
      run = converge_with(marker_content: fingerprint, venv_python: '/usr/bin/python3.11')
      expect(run).not_to run_execute('create backup-agent venv')
      expect(run).not_to run_execute('install backup-agent dependencies')
      expect(run).not_to run_execute('install backup-agent')
    end

    it 'with another wheel installed (a rebuilt agent of the same version): installs again' do
      run = converge_with(marker_content: fingerprint.sub(/wheel-sha256=\h+/, "wheel-sha256=#{'0' * 64}"),
                          venv_python: '/usr/bin/python3.11')
      expect(run).to run_execute('install backup-agent dependencies')
      expect(run).to run_execute('install backup-agent')
    end

    it 'with a venv of another Python: makes the venv again' do
      run = converge_with(marker_content: fingerprint, venv_python: '/usr/bin/python3.13')
      expect(run).to run_execute('create backup-agent venv')
    end
  end

  context 'on a machine where this agent is already installed (a reused CI machine)' do
    let(:dir) { Dir.mktmpdir('backup-agent-installed') }
    def runner
      ChefSpec::SoloRunner.new { |node| node.normal['backup_agent']['install']['dir'] = dir }
    end

    after { FileUtils.rm_rf(dir) }

    # A real installed state on disk: the agent, the marker of exactly this install, a venv of this Python.
    before do
      FileUtils.mkdir_p(File.join(dir, 'bin'))
      File.write(File.join(dir, 'bin', 'backup-agent'), "#!/bin/sh\n")
      File.chmod(0o755, File.join(dir, 'bin', 'backup-agent'))
      File.write(File.join(dir, 'pyvenv.cfg'), "home = /usr/bin\nexecutable = #{File.realpath(RbConfig.ruby)}\n")
      File.write(File.join(dir, '.chef-backup-agent-install'),
                 runner.converge(described_recipe).file(File.join(dir, '.chef-backup-agent-install')).content)
    end

    it 'gives the results of a fresh machine: the guards never read the real disk' do
      run = runner.converge(described_recipe)
      expect(run).to run_execute('install backup-agent')
      expect(run).to run_execute('create backup-agent venv')
    end

    it '... which the real disk would have changed (so the stubs are what made the difference)' do
      %i(read_file executable? venv_python).each { |name| allow(BackupAgentCookbook).to receive(name).and_call_original }
      allow(BackupAgentCookbook).to receive(:real_python).and_return(File.realpath(RbConfig.ruby))
      run = runner.converge(described_recipe)
      expect(run).not_to run_execute('install backup-agent')
      expect(run).not_to run_execute('create backup-agent venv')
    end
  end

  it 'links the agent onto root\'s PATH' do
    expect(chef_run).to create_link('/usr/local/bin/backup-agent').with(to: '/opt/backup-agent/bin/backup-agent')
  end

  context 'with the link in a directory that may not exist yet' do
    let(:attributes) { { 'bin_link' => '/opt/tools/bin/backup-agent' } }

    it 'creates the directory before the link' do
      expect(chef_run).to create_directory('/opt/tools/bin').with(recursive: true)
      expect(chef_run).to create_link('/opt/tools/bin/backup-agent').with(to: '/opt/backup-agent/bin/backup-agent')
    end
  end

  context 'with bin_link false' do
    let(:attributes) { { 'bin_link' => false } }

    it 'makes no link' do
      expect(chef_run.find_resources(:link)).to be_empty
    end
  end
end

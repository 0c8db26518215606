require_relative '../../spec_helper'
require 'tmpdir'

describe BackupAgentCookbook::Helpers do
  let(:install_dir) { Dir.mktmpdir('backup-agent-spec') }
  let(:install) do
    { 'dir' => install_dir, 'version' => '0.1.0', 'python' => '/usr/bin/python3', 'index_url' => nil,
      'find_links' => ['/srv/wheels'], 'no_index' => true, 'pip_extra_args' => [] }
  end
  let(:helper) do
    attrs = { 'backup_agent' => { 'install' => install, 'config_path' => '/etc/backup-agent/config.yaml' } }
    Class.new do
      include BackupAgentCookbook::Helpers
      define_method(:node) { attrs }
    end.new
  end

  after { FileUtils.rm_rf(install_dir) }

  it 'is part of the recipe DSL, not of every resource on the node' do
    expect(Chef::Recipe.new('c', 'r', nil)).to respond_to(:backup_agent_config)
    expect(Chef::Resource::File.new('/x')).not_to respond_to(:backup_agent_config)
    expect(Chef::Resource::Execute.new('x')).not_to respond_to(:backup_agent_bin)
  end

  def fake_agent(script)
    FileUtils.mkdir_p(File.join(install_dir, 'bin'))
    File.write(File.join(install_dir, 'bin', 'backup-agent'), "#!/bin/sh\n#{script}\n")
    File.chmod(0o755, File.join(install_dir, 'bin', 'backup-agent'))
  end

  # The real answers of the machine, here on temp dirs (spec_helper stubs them for recipes).
  before do
    %i(read_file executable? venv_python real_python daemon_pid).each do |name|
      allow(BackupAgentCookbook).to receive(name).and_call_original
    end
  end

  describe '#backup_agent_installed?' do
    before do
      fake_agent('exit 0')
      allow(helper).to receive(:backup_agent_wheel_sha256).and_return('a' * 64)
      allow(helper).to receive(:backup_agent_lock_sha256).and_return('b' * 64)
    end

    it 'is true only when the marker records this version, wheel, lock and these pip settings' do
      expect(helper.backup_agent_installed?).to be false
      File.write(helper.backup_agent_install_marker, helper.backup_agent_install_fingerprint)
      expect(helper.backup_agent_installed?).to be true
      install['find_links'] = ['/srv/other']
      expect(helper.backup_agent_installed?).to be false
      install['find_links'] = ['/srv/wheels']
      allow(helper).to receive(:backup_agent_wheel_sha256).and_return('c' * 64)
      expect(helper.backup_agent_installed?).to be false
      allow(helper).to receive(:backup_agent_wheel_sha256).and_return('a' * 64)
      allow(helper).to receive(:backup_agent_lock_sha256).and_return('d' * 64)
      expect(helper.backup_agent_installed?).to be false
    end
  end

  describe 'BackupAgentCookbook.venv_python' do
    it 'is the interpreter pyvenv.cfg records, or nil without a venv' do
      expect(BackupAgentCookbook.venv_python(install_dir)).to be_nil
      File.write(File.join(install_dir, 'pyvenv.cfg'),
                 "home = /usr/bin\ninclude-system-site-packages = false\nversion = 3.11.2\n" \
                 "executable = /usr/bin/python3.11\ncommand = /usr/bin/python3 -m venv #{install_dir}\n")
      expect(BackupAgentCookbook.venv_python(install_dir)).to eq('/usr/bin/python3.11')
    end
  end

  describe '#backup_agent_venv_current?' do
    it 'follows the real path of install.python: a link to the same interpreter is the same Python' do
      File.write(File.join(install_dir, 'pyvenv.cfg'), "executable = #{File.realpath(RbConfig.ruby)}\n")
      link = File.join(install_dir, 'python-link')
      File.symlink(RbConfig.ruby, link)
      install['python'] = link
      expect(helper.backup_agent_venv_current?).to be true
      install['python'] = '/nonexistent/python3'
      expect(helper.backup_agent_venv_current?).to be false
    end
  end

  describe '#backup_agent_pip_credentials?' do
    it 'is true when any pip source carries user:password@ or token@' do
      expect(helper.backup_agent_pip_credentials?).to be false
      install['index_url'] = 'https://pypi.example/simple'
      expect(helper.backup_agent_pip_credentials?).to be false
      install['find_links'] = ['https://token@mirror.example/wheels/']
      expect(helper.backup_agent_pip_credentials?).to be true
      install['find_links'] = []
      install['pip_extra_args'] = ['--extra-index-url', 'https://u:p@pypi.example/simple']
      expect(helper.backup_agent_pip_credentials?).to be true
    end
  end

  describe '#backup_agent_validate_config' do
    it 'accepts anything before the agent is installed' do
      expect(helper.backup_agent_validate_config('/nonexistent')).to be true
    end

    it 'accepts a config the agent validates' do
      fake_agent('echo ok')
      expect(helper.backup_agent_validate_config('/tmp/x.yaml')).to be true
    end

    it "raises with the agent's one-line reason when it rejects the config" do
      fake_agent('echo "a log line" >&2; echo "$2: jobs.etc.bogus: unknown key" >&2; echo ... >&2; exit 2')
      expect { helper.backup_agent_validate_config('/tmp/x.yaml') }.to raise_error(
        BackupAgentCookbook::ConfigError,
        'backup_agent: `backup-agent validate` rejected the new /etc/backup-agent/config.yaml, which is left ' \
        'unchanged: /tmp/x.yaml: jobs.etc.bogus: unknown key'
      )
    end
  end

  describe '#backup_agent_bucket_setup_due?' do
    let(:state_dir) { Dir.mktmpdir('backup-agent-state') }
    let(:config_path) { File.join(state_dir, 'config.yaml') }
    let(:helper) do
      attrs = { 'backup_agent' => { 'install' => install, 'config_path' => config_path, 'config' => { 'state_dir' => state_dir } } }
      Class.new do
        include BackupAgentCookbook::Helpers
        define_method(:node) { attrs }
      end.new
    end

    after { FileUtils.rm_rf(state_dir) }

    it 'is due until a setup recorded this config and this agent version, and again when either changes' do
      File.write(config_path, "storage: {bucket: b}\n")
      expect(helper.backup_agent_bucket_setup_due?).to be true
      File.write(helper.backup_agent_bucket_marker, helper.backup_agent_bucket_fingerprint)
      expect(helper.backup_agent_bucket_setup_due?).to be false
      File.write(config_path, "storage: {bucket: b}\njobs: {}\n")
      expect(helper.backup_agent_bucket_setup_due?).to be true
      File.write(helper.backup_agent_bucket_marker, helper.backup_agent_bucket_fingerprint)
      install['version'] = '0.2.0'
      expect(helper.backup_agent_bucket_setup_due?).to be true
    end

    it 'records digests only: the config holds credentials' do
      File.write(config_path, "storage: {bucket: b, secret_access_key: s3cr3t}\n")
      expect(helper.backup_agent_bucket_fingerprint).to match(/\Aconfig-sha256=\h{64}\nagent=0.1.0\n\z/)
    end
  end

  describe 'BackupAgentCookbook.daemon_pid' do
    let(:state_dir) { Dir.mktmpdir('backup-agent-state') }

    after { FileUtils.rm_rf(state_dir) }

    # Runs argv while the block runs; the block gets its pid.
    def with_process(*argv)
      pid = Process.spawn(*argv)
      sleep 0.2 # until exec has replaced the forked ruby's argv
      yield pid
    ensure
      Process.kill('KILL', pid)
      Process.wait(pid)
    end

    it 'is the pid in daemon.lock while that process is a backup-agent daemon' do
      # One process whose argv looks like the daemon's.
      with_process(RbConfig.ruby, '-e', 'sleep 30', '/opt/backup-agent/bin/backup-agent', 'daemon') do |pid|
        File.write(File.join(state_dir, 'daemon.lock'), "#{pid}\n")
        expect(BackupAgentCookbook.daemon_pid(state_dir)).to eq(pid)
      end
      expect(BackupAgentCookbook.daemon_pid(state_dir)).to be_nil
    end

    it 'is nil for a pid that belongs to another program, or without a lock file' do
      with_process(RbConfig.ruby, '-e', 'sleep 30') do |pid|
        File.write(File.join(state_dir, 'daemon.lock'), "#{pid}\n")
        expect(BackupAgentCookbook.daemon_pid(state_dir)).to be_nil
      end
      expect(BackupAgentCookbook.daemon_pid('/nonexistent')).to be_nil
    end
  end
end
